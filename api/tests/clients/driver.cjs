// A Socket.IO client driven over its standard streams, for the tests in api/tests/socketio.rs:
// one JSON command per line in, one JSON report per line out. The client library is the one
// named on the command line (`socket.io-client`, or `socket.io-client-v2` for Engine.IO 3).
//
//   in:  {"connect": {"url", "transports", "upgrade", "auth", "query"}}
//        {"emit": NAME, "args": [...], "id": N}     (without "id": no acknowledgement asked)
//        {"disconnect": true}
//   out: {"connected": TRANSPORT} {"upgraded": TRANSPORT} {"connect_error": MESSAGE}
//        {"disconnected": REASON} {"event": NAME, "args": [...]} {"ack": N, "args": [...]}
"use strict";
const readline = require("readline");
const io = require(process.argv[2] || "socket.io-client");

const report = (line) => process.stdout.write(JSON.stringify(line) + "\n");
let socket = null;

function connect({ url, transports, upgrade, auth, query }) {
  socket = io(url, {
    transports,
    upgrade: upgrade !== false,
    auth,
    query,
    forceNew: true,
    reconnection: false,
  });
  // The engine may upgrade before Socket.IO has connected: watched from the engine's opening.
  socket.io.on("open", () => {
    socket.io.engine.on("upgrade", (transport) => report({ upgraded: transport.name }));
  });
  socket.on("connect", () => report({ connected: socket.io.engine.transport.name }));
  socket.on("connect_error", (error) => report({ connect_error: error.message }));
  socket.on("disconnect", (reason) => report({ disconnected: reason }));
  if (typeof socket.onAny === "function") {
    socket.onAny((event, ...args) => report({ event, args }));
  } else {
    // Clients before 3.0 have no onAny: every incoming event passes through onevent.
    const onevent = socket.onevent;
    socket.onevent = function (packet) {
      const [event, ...args] = packet.data || [];
      report({ event, args });
      onevent.call(this, packet);
    };
  }
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  if (command.connect) {
    connect(command.connect);
  } else if (command.emit) {
    const args = command.args || [];
    if (command.id === undefined) {
      socket.emit(command.emit, ...args);
    } else {
      socket.emit(command.emit, ...args, (...reply) => report({ ack: command.id, args: reply }));
    }
  } else if (command.disconnect) {
    socket.disconnect();
  }
}).on("close", () => process.exit(0));
