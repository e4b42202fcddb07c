//! Which endpoint the sockets speak to: `/v1/ws`, or `/socket.io/` over Engine.IO 4's WebSocket
//! transport. Socket.IO carries the frames of `/v1/ws` unchanged, as the argument of an event or
//! of an acknowledgement (see docs/protocol.md), so the clients read and write the same frames
//! either way, and only this wrapping differs.

use serde_json::value::RawValue;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Endpoint {
    /// `/v1/ws`.
    #[default]
    Ws,
    /// `/socket.io/`, Socket.IO v5 over Engine.IO 4, WebSocket from the start.
    #[value(name = "socket.io")]
    SocketIo,
}

/// What a text frame from the server is to the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A frame of `/v1/ws`.
    Frame(&'a str),
    /// An Engine.IO ping, to be answered with [`PONG`].
    Ping,
    /// The server refused or ended the connection.
    Closed(String),
    /// Nothing for the client (Engine.IO's open packet, Socket.IO's connect packet).
    Nothing,
}

/// The answer to an Engine.IO ping.
pub const PONG: &str = "3";

impl Endpoint {
    /// The URL of a socket of the user `token` under `ws_base`.
    pub fn url(self, ws_base: &str, token: &str) -> String {
        match self {
            Endpoint::Ws => format!("{ws_base}/v1/ws?token={token}"),
            Endpoint::SocketIo => {
                format!("{ws_base}/socket.io/?EIO=4&transport=websocket&token={token}")
            }
        }
    }

    /// What the client sends once connected, before anything else: Socket.IO's connect packet
    /// for the default namespace (the token went in the URL).
    pub fn greeting(self) -> Option<&'static str> {
        match self {
            Endpoint::Ws => None,
            Endpoint::SocketIo => Some("40"),
        }
    }

    pub fn read(self, text: &str) -> Incoming<'_> {
        match self {
            Endpoint::Ws => Incoming::Frame(text),
            Endpoint::SocketIo => read_socketio(text),
        }
    }

    /// The text frame that sends `frame`, an op of `/v1/ws` named `op` whose reply is awaited
    /// as `reference`.
    pub fn op(self, op: &str, reference: u64, frame: String) -> String {
        match self {
            Endpoint::Ws => frame,
            Endpoint::SocketIo => format!("42{reference}[\"{op}\",{frame}]"),
        }
    }
}

/// Reads an Engine.IO 4 packet carrying Socket.IO: `2` ping, `40…` connected, `41` disconnect,
/// `42[name, frame]` an event, `43ID[frame]` an acknowledgement, `44{…}` a refusal.
fn read_socketio(text: &str) -> Incoming<'_> {
    if text == "2" {
        return Incoming::Ping;
    }
    let Some(packet) = text.strip_prefix('4') else {
        return Incoming::Nothing;
    };
    let (kind, rest) = packet.split_at(packet.len().min(1));
    let argument = match kind {
        "2" => 1,
        "3" => 0,
        "1" => return Incoming::Closed("disconnected by the server".to_owned()),
        "4" => return Incoming::Closed(format!("refused: {rest}")),
        _ => return Incoming::Nothing,
    };
    let arguments = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    match serde_json::from_str::<Vec<&RawValue>>(arguments) {
        Ok(arguments) => {
            arguments.get(argument).map_or(Incoming::Nothing, |a| Incoming::Frame(a.get()))
        }
        Err(_) => Incoming::Closed(format!("an unreadable Socket.IO packet: {text}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socketio_packets_carry_the_frames_of_v1_ws() {
        let io = Endpoint::SocketIo;
        assert_eq!(io.read("2"), Incoming::Ping);
        assert_eq!(io.read(r#"0{"sid":"a"}"#), Incoming::Nothing);
        assert_eq!(io.read(r#"40{"sid":"b"}"#), Incoming::Nothing);
        assert_eq!(
            io.read(r#"42["message.sent",{"op":"event","type":"message.sent"}]"#),
            Incoming::Frame(r#"{"op":"event","type":"message.sent"}"#)
        );
        assert_eq!(
            io.read(r#"4317[{"op":"ack","ref":17}]"#),
            Incoming::Frame(r#"{"op":"ack","ref":17}"#)
        );
        assert!(
            matches!(io.read(r#"44{"message":"no"}"#), Incoming::Closed(reason) if reason.contains("no"))
        );
        assert_eq!(
            io.op("send", 9, r#"{"op":"send","ref":9}"#.into()),
            r#"429["send",{"op":"send","ref":9}]"#
        );
        assert_eq!(Endpoint::Ws.read("{}"), Incoming::Frame("{}"));
    }
}
