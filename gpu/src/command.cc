#include "command.h"

namespace canopy::gpu {

using proto::Cmd;

size_t fixed_size(Cmd type, Queue q) {
  if (q == Queue::kCursor) {
    return type == Cmd::kUpdateCursor || type == Cmd::kMoveCursor ? sizeof(proto::UpdateCursor) : 0;
  }
  switch (type) {
    case Cmd::kGetDisplayInfo: return sizeof(proto::CtrlHdr);
    case Cmd::kResourceCreate2d: return sizeof(proto::ResourceCreate2d);
    case Cmd::kResourceUnref: return sizeof(proto::ResourceUnref);
    case Cmd::kSetScanout: return sizeof(proto::SetScanout);
    case Cmd::kResourceFlush: return sizeof(proto::ResourceFlush);
    case Cmd::kTransferToHost2d: return sizeof(proto::TransferToHost2d);
    case Cmd::kResourceAttachBacking: return sizeof(proto::ResourceAttachBacking);
    case Cmd::kResourceDetachBacking: return sizeof(proto::ResourceDetachBacking);
    case Cmd::kGetCapsetInfo: return sizeof(proto::GetCapsetInfo);
    case Cmd::kGetCapset: return sizeof(proto::GetCapset);
    case Cmd::kGetEdid: return sizeof(proto::GetEdid);
    case Cmd::kResourceAssignUuid: return sizeof(proto::ResourceAssignUuid);
    case Cmd::kResourceCreateBlob: return sizeof(proto::ResourceCreateBlob);
    case Cmd::kSetScanoutBlob: return sizeof(proto::SetScanoutBlob);
    case Cmd::kCtxCreate: return sizeof(proto::CtxCreate);
    case Cmd::kCtxDestroy: return sizeof(proto::CtxDestroy);
    case Cmd::kCtxAttachResource:
    case Cmd::kCtxDetachResource: return sizeof(proto::CtxResource);
    case Cmd::kSubmit3d: return sizeof(proto::CmdSubmit);
    case Cmd::kResourceMapBlob: return sizeof(proto::ResourceMapBlob);
    case Cmd::kResourceUnmapBlob: return sizeof(proto::ResourceUnmapBlob);
    // 3D resource commands: only a 3D renderer serves them (the 2D one answers ERR_UNSPEC).
    case Cmd::kResourceCreate3d: return sizeof(proto::ResourceCreate3d);
    case Cmd::kTransferToHost3d:
    case Cmd::kTransferFromHost3d: return sizeof(proto::TransferHost3d);
    default: return 0;
  }
}

Result<Command> decode(std::span<const uint8_t> request, Queue q, DecodeError* err) {
  auto fail = [&](const char* why) {
    *err = {proto::Resp::kErrUnspec, why};
    return make_error(Errc::kInvalidArgument, why);
  };
  if (request.size() < sizeof(proto::CtrlHdr)) return fail("request shorter than the header");
  Command c;
  std::memcpy(&c.hdr, request.data(), sizeof c.hdr);
  c.type = static_cast<Cmd>(c.hdr.type.get());
  const size_t need = fixed_size(c.type, q);
  if (need == 0) return fail("unknown command type");
  if (request.size() < need) return fail("request shorter than its command");
  if (c.hdr.flags.get() & ~(proto::kFlagFence | proto::kFlagInfoRingIdx)) return fail("unknown header flags");
  c.bytes = request;
  return c;
}

bool decode_entries(std::span<const uint8_t> tail, uint32_t count, uint32_t max_entries,
                    std::vector<proto::MemEntry>& out, DecodeError* err) {
  if (count > max_entries) {
    *err = {proto::Resp::kErrOutOfMemory, "more memory entries than the cap"};
    return false;
  }
  const uint64_t need = uint64_t(count) * sizeof(proto::MemEntry);
  if (tail.size() < need) {
    *err = {proto::Resp::kErrUnspec, "memory entries run past the request"};
    return false;
  }
  out.resize(count);
  if (count) std::memcpy(out.data(), tail.data(), size_t(need));
  return true;
}

}  // namespace canopy::gpu
