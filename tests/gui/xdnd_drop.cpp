// xdnd_drop WINDOW X Y PATH...: drops PATHs onto the X window WINDOW at the root position
// (X, Y) the way a file manager does, with the XDND protocol (version 5): enter, position,
// status, drop, the selection request for text/uri-list, finished. The GUI tests use it for a
// real drag-and-drop (xdotool cannot drag between clients).
// Exits 0 when the target took the drop, 1 when it refused it or did not answer within 10 s,
// 2 on a usage error or without a display.

#include <X11/Xatom.h>
#include <X11/Xlib.h>
#include <poll.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace {

// file:///the/path with every byte outside the unreserved set and '/' percent-encoded.
std::string file_uri(const std::string& path) {
  std::string uri = "file://";
  for (unsigned char c : std::filesystem::absolute(path).string()) {
    if (std::isalnum(c) || c == '/' || c == '-' || c == '_' || c == '.' || c == '~') {
      uri += char(c);
    } else {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", c);
      uri += hex;
    }
  }
  return uri;
}

struct Atoms {
  Atom enter, position, status, drop, finished, selection, copy, uri_list;
  explicit Atoms(Display* d)
      : enter(XInternAtom(d, "XdndEnter", False)),
        position(XInternAtom(d, "XdndPosition", False)),
        status(XInternAtom(d, "XdndStatus", False)),
        drop(XInternAtom(d, "XdndDrop", False)),
        finished(XInternAtom(d, "XdndFinished", False)),
        selection(XInternAtom(d, "XdndSelection", False)),
        copy(XInternAtom(d, "XdndActionCopy", False)),
        uri_list(XInternAtom(d, "text/uri-list", False)) {}
};

void send(Display* d, Window target, Atom type, long l0, long l1, long l2, long l3, long l4) {
  XEvent e{};
  e.xclient.type = ClientMessage;
  e.xclient.display = d;
  e.xclient.window = target;
  e.xclient.message_type = type;
  e.xclient.format = 32;
  e.xclient.data.l[0] = l0;
  e.xclient.data.l[1] = l1;
  e.xclient.data.l[2] = l2;
  e.xclient.data.l[3] = l3;
  e.xclient.data.l[4] = l4;
  XSendEvent(d, target, False, NoEventMask, &e);
  XFlush(d);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s WINDOW X Y PATH...\n", argv[0]);
    return 2;
  }
  const Window target = std::strtoul(argv[1], nullptr, 0);
  const long x = std::atol(argv[2]), y = std::atol(argv[3]);
  std::string uris;
  for (int i = 4; i < argc; ++i) uris += file_uri(argv[i]) + "\r\n";

  Display* d = XOpenDisplay(nullptr);
  if (!d) {
    std::fprintf(stderr, "xdnd_drop: cannot open the display\n");
    return 2;
  }
  const Atoms a(d);
  const Window source = XCreateSimpleWindow(d, DefaultRootWindow(d), 0, 0, 1, 1, 0, 0, 0);
  XSetSelectionOwner(d, a.selection, source, CurrentTime);
  if (XGetSelectionOwner(d, a.selection) != source) {
    std::fprintf(stderr, "xdnd_drop: could not own XdndSelection\n");
    return 1;
  }
  send(d, target, a.enter, long(source), 5L << 24, long(a.uri_list), 0, 0);
  send(d, target, a.position, long(source), 0, (x << 16) | y, CurrentTime, long(a.copy));

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  bool dropped = false;
  while (std::chrono::steady_clock::now() < deadline) {
    if (!XPending(d)) {
      pollfd p{ConnectionNumber(d), POLLIN, 0};
      poll(&p, 1, 100);
      continue;
    }
    XEvent e;
    XNextEvent(d, &e);
    if (e.type == ClientMessage && Atom(e.xclient.message_type) == a.status) {
      if (dropped) continue;
      if (!(e.xclient.data.l[1] & 1)) {
        std::fprintf(stderr, "xdnd_drop: the target refused text/uri-list\n");
        return 1;
      }
      send(d, target, a.drop, long(source), 0, CurrentTime, 0, 0);
      dropped = true;
    } else if (e.type == SelectionRequest) {
      const XSelectionRequestEvent& r = e.xselectionrequest;
      XEvent reply{};
      reply.xselection.type = SelectionNotify;
      reply.xselection.display = d;
      reply.xselection.requestor = r.requestor;
      reply.xselection.selection = r.selection;
      reply.xselection.target = r.target;
      reply.xselection.time = r.time;
      reply.xselection.property = None;
      if (r.target == a.uri_list && r.property != None) {
        XChangeProperty(d, r.requestor, r.property, r.target, 8, PropModeReplace,
                        reinterpret_cast<const unsigned char*>(uris.data()), int(uris.size()));
        reply.xselection.property = r.property;
      }
      XSendEvent(d, r.requestor, False, NoEventMask, &reply);
      XFlush(d);
    } else if (e.type == ClientMessage && Atom(e.xclient.message_type) == a.finished) {
      // The spec's flag is bit 0; GLFW 3.3 sends the byte count it read there instead, so any
      // non-zero value means the drop was taken.
      const bool accepted = e.xclient.data.l[1] != 0;
      if (!accepted) std::fprintf(stderr, "xdnd_drop: the target did not accept the drop\n");
      XCloseDisplay(d);
      return accepted ? 0 : 1;
    }
  }
  std::fprintf(stderr, "xdnd_drop: no %s from the target within 10 s\n",
               dropped ? "XdndFinished" : "XdndStatus");
  return 1;
}
