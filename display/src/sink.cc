#include "canopy/display/sink.h"

#include <SDL2/SDL.h>

namespace canopy::display {

namespace {

class HeadlessSink final : public OutputSink {
 public:
  const char* name() const override { return "headless"; }
  Status present(const Canvas&) override { return {}; }
};

// SDL's video subsystem is process-wide: initialised once, quit with the last window.
int g_sdl_windows = 0;

class WindowSink final : public OutputSink {
 public:
  ~WindowSink() override {
    if (tex_) SDL_DestroyTexture(tex_);
    if (ren_) SDL_DestroyRenderer(ren_);
    if (win_) SDL_DestroyWindow(win_);
    if (counted_ && --g_sdl_windows == 0) SDL_QuitSubSystem(SDL_INIT_VIDEO);
  }
  const char* name() const override { return "window"; }

  Status init(const std::string& title, uint32_t w, uint32_t h) {
    if (g_sdl_windows == 0 && SDL_InitSubSystem(SDL_INIT_VIDEO) != 0)
      return make_error(Errc::kUnsupported, "window: no display for SDL");
    ++g_sdl_windows;
    counted_ = true;
    win_ = SDL_CreateWindow(title.c_str(), SDL_WINDOWPOS_UNDEFINED, SDL_WINDOWPOS_UNDEFINED, int(w), int(h),
                            SDL_WINDOW_RESIZABLE);
    if (!win_) return make_error(Errc::kUnsupported, "window: SDL_CreateWindow failed");
    // No vsync: the compositor's own deadlines pace the output, a blocked present would stall them.
    ren_ = SDL_CreateRenderer(win_, -1, 0);
    if (!ren_) return make_error(Errc::kUnsupported, "window: SDL_CreateRenderer failed");
    SDL_RenderSetLogicalSize(ren_, int(w), int(h));
    tex_ = SDL_CreateTexture(ren_, SDL_PIXELFORMAT_RGB888, SDL_TEXTUREACCESS_STREAMING, int(w), int(h));
    if (!tex_) return make_error(Errc::kUnsupported, "window: SDL_CreateTexture failed");
    return {};
  }

  Status present(const Canvas& c) override {
    if (SDL_UpdateTexture(tex_, nullptr, c.data, int(c.stride)) != 0)
      return make_error(Errc::kIo, "window: SDL_UpdateTexture failed");
    SDL_RenderClear(ren_);
    SDL_RenderCopy(ren_, tex_, nullptr, nullptr);
    SDL_RenderPresent(ren_);
    return {};
  }

  bool poll() override {
    SDL_Event e;
    while (SDL_PollEvent(&e)) {
      if (e.type == SDL_QUIT) closed_ = true;
      if (e.type == SDL_WINDOWEVENT && e.window.event == SDL_WINDOWEVENT_CLOSE &&
          e.window.windowID == SDL_GetWindowID(win_))
        closed_ = true;
    }
    return !closed_;
  }

 private:
  SDL_Window* win_ = nullptr;
  SDL_Renderer* ren_ = nullptr;
  SDL_Texture* tex_ = nullptr;
  bool closed_ = false;
  bool counted_ = false;
};

}  // namespace

std::unique_ptr<OutputSink> make_headless_sink() { return std::make_unique<HeadlessSink>(); }

Result<std::unique_ptr<OutputSink>> make_window_sink(const std::string& title, uint32_t width, uint32_t height) {
  auto w = std::make_unique<WindowSink>();
  CANOPY_TRY(w->init(title, width, height));
  return std::unique_ptr<OutputSink>(std::move(w));
}

}  // namespace canopy::display
