// The Vulkan renderer's one compute shader: draws one layer into the output canvas (a storage buffer
// of XRGB8888 words), reading the layer's frame straight from the buffer it was imported as.
//
// The arithmetic is integer and follows the pixman renderer's definition step by step, so both
// renderers give the same pixels (renderer_vulkan.cc says where each rule comes from):
//   - sample point of a dst pixel: v0 + dx * (m00, m10) + dy * (m01, m11), 16.16 fixed point, the
//     pixel centre already in v0 (computed on the host with 64-bit products, rounded like pixman);
//   - bilinear: top-left texel floor(p - 1/2), 7-bit weights, channels floor(sum / 2^14);
//   - edges: texel coordinates clamped to the frame (pad);
//   - layer alpha as an 8-bit mask m: s' = s * m / 255, then OVER: d = s' + d * (255 - s'.a) / 255
//     with pixman's rounded 8-bit multiply, saturating add; opaque layers without alpha: SRC.
#version 450

layout(local_size_x = 16, local_size_y = 16) in;

layout(std430, set = 0, binding = 0) buffer CanvasBuf { uint px[]; } canvas;
layout(std430, set = 0, binding = 1) readonly buffer SrcBuf { uint w[]; } src;

layout(push_constant) uniform Params {
  ivec4 m;             // bilinear: m00, m01, m10, m11 in 16.16 (first: an ivec4 is 16-byte aligned)
  ivec2 dst_origin;    // canvas pixel of invocation (0, 0)
  ivec2 dst_size;      // invocations that draw
  ivec2 v0;            // bilinear: 16.16 sample point of invocation (0, 0)
  ivec2 exact_origin;  // exact: source pixel of invocation (0, 0)
  uint canvas_stride;  // words
  uint src_offset;     // bytes into src
  uint src_stride;     // bytes
  uint src_w;
  uint src_h;
  uint format;  // 0 XRGB8888, 1 ARGB8888, 2 XBGR8888, 3 ABGR8888, 4 RGB565
  uint mode;    // 0 exact (integer translation), 1 bilinear
  uint mask;    // layer alpha 0..255
  uint op;      // 0 SRC, 1 OVER
} p;

// A texel as premultiplied a8r8g8b8.
uint fetch(int x, int y) {
  x = clamp(x, 0, int(p.src_w) - 1);
  y = clamp(y, 0, int(p.src_h) - 1);
  if (p.format == 4u) {
    uint byte_at = p.src_offset + uint(y) * p.src_stride + uint(x) * 2u;
    uint word = src.w[byte_at >> 2];
    uint s = (byte_at & 2u) != 0u ? (word >> 16) : (word & 0xffffu);
    uint r = (s >> 11) & 0x1fu, g = (s >> 5) & 0x3fu, b = s & 0x1fu;
    r = (r << 3) | (r >> 2);
    g = (g << 2) | (g >> 4);
    b = (b << 3) | (b >> 2);
    return 0xff000000u | (r << 16) | (g << 8) | b;
  }
  uint v = src.w[(p.src_offset + uint(y) * p.src_stride + uint(x) * 4u) >> 2];
  if (p.format == 2u || p.format == 3u) v = (v & 0xff00ff00u) | ((v >> 16) & 0xffu) | ((v & 0xffu) << 16);
  if (p.format == 0u || p.format == 2u) v |= 0xff000000u;
  return v;
}

uint channel(uint v, uint shift) { return (v >> shift) & 0xffu; }

// pixman's MUL_UN8: a * b / 255, rounded.
uint mul_un8(uint a, uint b) {
  uint t = a * b + 0x80u;
  return ((t >> 8) + t) >> 8;
}

uint bilinear(ivec2 pt) {
  ivec2 q = pt - ivec2(0x8000);
  ivec2 t = q >> 16;  // arithmetic shift: floor
  uint wx = uint(q.x >> 9) & 0x7fu, wy = uint(q.y >> 9) & 0x7fu;
  uint tl = fetch(t.x, t.y), tr = fetch(t.x + 1, t.y);
  uint bl = fetch(t.x, t.y + 1), br = fetch(t.x + 1, t.y + 1);
  uint out_px = 0u;
  for (uint sh = 0u; sh < 32u; sh += 8u) {
    uint top = channel(tl, sh) * (128u - wy) + channel(bl, sh) * wy;
    uint bot = channel(tr, sh) * (128u - wy) + channel(br, sh) * wy;
    out_px |= (((top * (128u - wx) + bot * wx) >> 14) & 0xffu) << sh;
  }
  return out_px;
}

void main() {
  ivec2 d = ivec2(gl_GlobalInvocationID.xy);
  if (d.x >= p.dst_size.x || d.y >= p.dst_size.y) return;
  uint s;
  if (p.mode == 0u) {
    s = fetch(p.exact_origin.x + d.x, p.exact_origin.y + d.y);
  } else {
    ivec2 pt = p.v0 + d.x * ivec2(p.m.x, p.m.z) + d.y * ivec2(p.m.y, p.m.w);
    s = bilinear(pt);
  }
  uint at = uint(p.dst_origin.y + d.y) * p.canvas_stride + uint(p.dst_origin.x + d.x);
  if (p.op == 0u) {
    canvas.px[at] = s | 0xff000000u;
    return;
  }
  if (p.mask != 255u) {
    uint masked = 0u;
    for (uint sh = 0u; sh < 32u; sh += 8u) masked |= mul_un8(channel(s, sh), p.mask) << sh;
    s = masked;
  }
  uint dst = canvas.px[at] | 0xff000000u;
  uint ia = 255u - (s >> 24);
  uint out_px = 0u;
  for (uint sh = 0u; sh < 32u; sh += 8u) out_px |= min(channel(s, sh) + mul_un8(channel(dst, sh), ia), 255u) << sh;
  canvas.px[at] = out_px | 0xff000000u;
}
