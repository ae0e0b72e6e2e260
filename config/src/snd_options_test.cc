// canopy-snd's option specs: every key parsed, bad values refused, and print -> parse round trips (the
// printer is what canopy-vmm writes canopy-snd's flags with).
#include "canopy/config/snd_options.h"

#include <gtest/gtest.h>

namespace canopy::config {
namespace {

TEST(StreamSpec, ParsesEveryKeyAndRoundTrips) {
  auto s = parse_stream_spec(
      "name=chime,dir=output,channels=2,rates=44100:48000,role=chime,positions=FL:FR,priority=100,duck-others,"
      "duck-db=-18.5,ramp-ms=30,target=ci-null-sink");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->name, "chime");
  EXPECT_EQ(s->rates, (1u << 6) | (1u << 7));
  EXPECT_EQ(s->policy.priority, 100u);
  EXPECT_TRUE(s->policy.duck_others);
  EXPECT_EQ(s->policy.duck_db, -18.5);
  EXPECT_EQ(s->policy.ramp_ms, 30u);
  EXPECT_EQ(s->target, "ci-null-sink");
  ASSERT_EQ(s->positions.size(), 2u);
  auto again = parse_stream_spec(stream_spec(*s));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(stream_spec(*again), stream_spec(*s));
  for (const char* bad :
       {"name=x", "dir=output", "name=x,dir=sideways", "name=x,dir=output,rates=44000", "name=x,dir=output,channels=0",
        "name=x,dir=output,channels=19", "name=x,dir=output,priority=101", "name=x,dir=output,duck-db=3",
        "name=x,dir=output,positions=FL", "name=x,dir=output,colour=red", "name=x y,dir=output",
        "name=x,dir=output,duck-others=1"})
    EXPECT_FALSE(parse_stream_spec(bad).ok()) << bad;
  auto j = parse_jack_spec("name=hp,dir=output,device=headphone,connected=0");
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(j->hda_device, protocol::virtio_snd::kHdaDevHpOut);
  EXPECT_FALSE(j->connected);
  EXPECT_FALSE(parse_jack_spec("name=hp,dir=output,device=tuba").ok());
  auto j2 = parse_jack_spec(jack_spec(*j));
  ASSERT_TRUE(j2.ok());
  EXPECT_EQ(jack_spec(*j2), jack_spec(*j));
  EXPECT_EQ(j2->hda_device, j->hda_device);
  EXPECT_EQ(j2->connected, j->connected);
}

}  // namespace
}  // namespace canopy::config
