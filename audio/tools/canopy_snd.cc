// canopy-snd: the virtio-snd vhost-user back-end (virtio 1.2 §5.14 + 1.3 controls; docs/sound.md).
//
//   canopy-snd --socket-path /tmp/snd.sock          one stereo playback and one stereo capture stream
//                                                   on the default PipeWire sink and source
//   qemu-system-x86_64 ... -chardev socket,id=snd,path=/tmp/snd.sock
//       -device vhost-user-snd-pci,chardev=snd
//   canopy-snd --socket-path /tmp/snd.sock --controls    volume and mute controls (VIRTIO_SND_F_CTLS),
//       -device vhost-user-snd-pci,chardev=snd,controls=on   for a front-end whose config space holds them
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "canopy/audio/vhost_snd.h"
#include "canopy/base/log.h"
#include "canopy/config/snd_options.h"
#include "canopy/transport/backend_main.h"
#include "canopy/transport/backend_sandbox.h"

namespace {

using namespace canopy;
using namespace canopy::audio;
namespace vu = canopy::transport::vhost_user;

constexpr const char* kUsage =
    "  --stream=SPEC            a PCM stream (repeat; default: one stereo output 'playback' and one\n"
    "                           stereo input 'capture'). SPEC: name=N,dir=output|input[,channels=C]\n"
    "                           [,rates=44100:48000][,role=R][,positions=FL:FR][,target=NODE]\n"
    "                           [,priority=P][,duck-others][,duck-db=-20][,ramp-ms=50][,exclusive]\n"
    "  --jack=SPEC              a jack: name=N,dir=output|input[,device=speaker|headphone|line-out|\n"
    "                           line-in|mic][,connected=0|1]\n"
    "  --host=auto|pipewire|null  where the audio goes (default auto: PipeWire, or the null host with a\n"
    "                           warning when no PipeWire daemon answers; or $CANOPY_SND_HOST)\n"
    "  --wav-dir=DIR            record each playback stream to DIR/VM-STREAM.wav (either host): what the\n"
    "                           guest delivered; where it was late: underruns in the stats, not silence\n"
    "  --capture-tone=HZ        null host: capture streams hear a sine at -6 dBFS\n"
    "  --vm=NAME                the VM (PipeWire node names, policy board labels)\n"
    "  --policy=PATH            the cross-VM policy board (default $XDG_RUNTIME_DIR/canopy-audio-policy)\n"
    "  --no-policy              no cross-VM policy\n"
    "  --policy-fd=N --policy-states=A,B,...  canopy-vmm's board instead (what canopy-vmm passes): the\n"
    "                           sealed policy table from the manifest, and each VM's state segment (this\n"
    "                           VM's writable, the others read-only); priorities come from the table\n"
    "  --controls               offer VIRTIO_SND_F_CTLS (a volume and a switch per stream); QEMU needs\n"
    "                           controls=on on vhost-user-snd-pci for it (canopy-vmm passes this itself)\n"
    "  --no-controls            do not offer VIRTIO_SND_F_CTLS (the default, as QEMU's controls=off)\n"
    "  --force-quantum          force PipeWire's quantum to the guest's period while a stream runs\n"
    "  --pipewire-fd=N          use descriptor N, a connection to the PipeWire daemon made for it\n"
    "                           (canopy-vmm does so for a back-end under another uid)\n"
    "  --stats=FILE             write the per-stream summary to FILE at exit (default with\n"
    "                           $CANOPY_SND_STATS_DIR or else $CANOPY_SCRATCH_DIR set: that folder,\n"
    "                           VM-snd.txt)\n";

Result<std::unique_ptr<vu::Device>> make_device(const std::vector<std::string>& args) {
  SndOptions o;
  // The default host: auto (PipeWire, or the null host with a warning when no daemon answers), or what
  // $CANOPY_SND_HOST says.
  const char* env_host = std::getenv("CANOPY_SND_HOST");
  std::string host = "auto", wav_dir, policy, stats;
  if (env_host && (std::string(env_host) == "null" || std::string(env_host) == "pipewire")) host = env_host;
  bool no_policy = false, force_quantum = false;
  int policy_fd = -1, pipewire_fd = -1;
  std::vector<int> policy_states;
  double tone = 0;
  for (const auto& a : args) {
    const auto eq = a.find('=');
    const std::string key = a.substr(0, eq), val = eq == std::string::npos ? "" : a.substr(eq + 1);
    const bool flag = eq == std::string::npos;
    if (key == "--stream") {
      auto s = config::parse_stream_spec(val);
      if (!s.ok()) {
        CANOPY_ERROR("canopy-snd: %s: %s", a.c_str(), s.error().what);
        return s.error();
      }
      o.streams.push_back(std::move(*s));
    } else if (key == "--jack") {
      auto j = config::parse_jack_spec(val);
      if (!j.ok()) {
        CANOPY_ERROR("canopy-snd: %s: %s", a.c_str(), j.error().what);
        return j.error();
      }
      o.jacks.push_back(std::move(*j));
    } else if (key == "--host" && (val == "auto" || val == "pipewire" || val == "null")) host = val;
    else if (key == "--wav-dir" && !val.empty()) wav_dir = val;
    else if (key == "--capture-tone" && !val.empty()) tone = std::atof(val.c_str());
    else if (key == "--vm" && !val.empty() && val.size() < 64) o.vm = val;
    else if (key == "--policy" && !val.empty()) policy = val;
    else if (key == "--no-policy" && flag) no_policy = true;
    else if (key == "--policy-fd" && !val.empty()) policy_fd = std::atoi(val.c_str());
    else if (key == "--policy-states" && !val.empty()) {
      for (size_t at = 0; at <= val.size();) {
        const size_t comma = std::min(val.find(',', at), val.size());
        policy_states.push_back(std::atoi(val.substr(at, comma - at).c_str()));
        at = comma + 1;
      }
    } else if (key == "--controls" && flag) o.controls = true;
    else if (key == "--no-controls" && flag) o.controls = false;
    else if (key == "--force-quantum" && flag) force_quantum = true;
    else if (key == "--stats" && !val.empty()) stats = val;
    else if (key == "--pipewire-fd" && !val.empty()) pipewire_fd = std::atoi(val.c_str());
    else {
      CANOPY_ERROR("canopy-snd: bad option %s", a.c_str());
      return make_error(Errc::kInvalidArgument, "bad option (see --help)");
    }
  }
  if (o.streams.empty()) {
    StreamConfig out;
    out.name = "playback";
    StreamConfig in;
    in.name = "capture";
    in.direction = proto::Direction::kInput;
    o.streams = {out, in};
  }
  std::unique_ptr<HostBackend> h;
  if (host == "null" && pipewire_fd >= 0) ::close(pipewire_fd);  // not needed
  if (host != "null") {
    PipeWireHostOptions po;
    po.vm = o.vm;
    po.force_quantum = force_quantum;
    po.wav_dir = wav_dir;
    po.fd = pipewire_fd;
    auto r = make_pipewire_backend(po);
    if (r.ok()) {
      h = std::move(*r);
      host = "pipewire";
    } else if (host == "pipewire") {
      CANOPY_ERROR("canopy-snd: %s (--host=auto falls back to the null host)", r.error().what);
      return r.error();
    } else {
      CANOPY_WARN("canopy-snd: %s: playing into the null host (silence; --host=pipewire makes this an error)",
                  r.error().what);
      host = "null";
    }
  }
  if (host == "null") {
    NullHostOptions no;
    no.wav_dir = wav_dir;
    no.capture_tone_hz = tone;
    no.vm = o.vm;
    CANOPY_ASSIGN_OR_RETURN(h, make_null_backend(no));
  }
  std::unique_ptr<PolicyBoard> board;
  if (!no_policy && policy_fd >= 0) {
    auto b = PolicyBoard::from_vmm(policy_fd, policy_states, o.vm);
    if (!b.ok()) {
      CANOPY_ERROR("canopy-snd: canopy-vmm's policy board: %s", b.error().what);
      return b.error();
    }
    board = std::move(*b);
  } else if (!no_policy) {
    if (policy.empty()) {
      const char* rt = std::getenv("XDG_RUNTIME_DIR");
      if (rt && *rt) policy = std::string(rt) + "/canopy-audio-policy";
    }
    if (!policy.empty()) {
      auto b = PolicyBoard::open(policy);
      if (!b.ok()) {
        CANOPY_ERROR("canopy-snd: policy board %s: %s", policy.c_str(), b.error().what);
        return b.error();
      }
      board = std::move(*b);
    }
  }
  const size_t nstreams = o.streams.size(), njacks = o.jacks.size();
  const bool controls = o.controls;
  const std::string vm = o.vm;
  CANOPY_ASSIGN_OR_RETURN(auto dev, VhostSnd::create(std::move(o), std::move(h), std::move(board)));
  if (stats.empty()) {
    // canopy-vmm passes its environment on, and names the VM's scratch folder (--scratch-dir): the demo
    // collects every VM's summary this way.
    const char* dir = std::getenv("CANOPY_SND_STATS_DIR");
    if (!dir || !*dir) dir = std::getenv("CANOPY_SCRATCH_DIR");
    if (dir && *dir) stats = std::string(dir) + "/" + vm + "-snd.txt";
  }
  dev->set_stats_path(stats);
  CANOPY_INFO("canopy-snd: vm %s, %zu stream(s), %zu jack(s), controls %s, host %s, policy %s", vm.c_str(), nstreams,
              njacks, controls ? "on" : "off", host.c_str(),
              no_policy        ? "off"
              : policy_fd >= 0 ? "from canopy-vmm (the manifest's table)"
              : policy.empty() ? "off"
                               : policy.c_str());
  return std::unique_ptr<vu::Device>(std::move(dev));
}

}  // namespace

int main(int argc, char** argv) {
  vu::BackendProgram program{"canopy-snd", "sound", {}, kUsage};
  program.valued_options = {"--stream", "--jack",  "--host",      "--wav-dir",       "--capture-tone", "--vm",
                            "--policy", "--stats", "--policy-fd", "--policy-states", "--pipewire-fd"};
  // Confined like every back-end (backend_sandbox.h: PipeWire's client needs only unix sockets, memfds,
  // threads and its own scheduling); it writes its recordings, its stats and the shared policy file.
  program.confine = true;
  program.writable_options = {"--wav-dir", "--stats", "--policy"};
  if (const char* d = std::getenv("CANOPY_SND_STATS_DIR"); d && *d) program.writable_paths.emplace_back(d);
  // PipeWire's client reads its configuration from the user's folder too, where there is one.
  program.readable_paths = canopy::transport::driver_config_paths();  // SPA_PLUGIN_DIR, PIPEWIRE_MODULE_DIR ...
  if (const char* c = std::getenv("PIPEWIRE_CONFIG_DIR"); c && *c) program.readable_paths.emplace_back(c);
  if (const char* x = std::getenv("XDG_CONFIG_HOME"); x && *x)
    program.readable_paths.push_back(std::string(x) + "/pipewire");
  else if (const char* h = std::getenv("HOME"); h && *h)
    program.readable_paths.push_back(std::string(h) + "/.config/pipewire");
  bool default_board = true;  // the shared file in $XDG_RUNTIME_DIR, unless another board or none is asked for
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--no-policy" || a.rfind("--policy", 0) == 0) default_board = false;
  }
  if (const char* rt = std::getenv("XDG_RUNTIME_DIR"); default_board && rt && *rt)
    program.writable_paths.emplace_back(rt);
  return vu::backend_main(argc, argv, program, make_device);
}
