//! The peering messages: versioned JSON in length-prefixed frames on one QUIC stream.
//!
//! Compatibility between releases: every frame carries `version`; a receiver accepts any
//! version from 1 up, ignores fields it does not know and turns message types it does not
//! know into [`Message::Unknown`], which it skips. A newer release must keep the meaning of
//! the fields defined here; a change that cannot be read this way needs a new `version` and
//! a sender that speaks the lower of the two versions announced in `hello`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The version this release speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame accepted (a full table of a large site fits many times over).
pub const MAX_FRAME: usize = 16 << 20;

/// What is announced: a legacy prefix behind a gateway, or a portal service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouteKey {
    /// An IP prefix reachable through the announcing gateway.
    Prefix {
        /// The prefix.
        prefix: IpNet,
    },
    /// A service the announcing gateway serves under a portal VIP.
    Service {
        /// Kubernetes namespace.
        namespace: String,
        /// Service name.
        name: String,
    },
}

/// A service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    /// Port number.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// What a service route says beyond its key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceAttrs {
    /// The announcing gateway's portal VIP for the service (each gateway that imports a
    /// service serves it under its own VIP and announces that one).
    pub vip: IpAddr,
    /// The ports.
    pub ports: Vec<ServicePort>,
}

/// One announced route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// What it is for.
    pub key: RouteKey,
    /// The gateways it passed, nearest first: the announcing gateway first, the origin last.
    pub path: Vec<String>,
    /// For services: where the announcing gateway serves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceAttrs>,
}

/// A peering message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// First message on a connection, from both sides.
    Hello {
        /// The sender's gateway id.
        gateway_id: String,
        /// Increases each time the sender starts: a new generation replaces everything the
        /// previous one announced.
        generation: u64,
        /// The sender's hold time in seconds (the receiver uses the smaller of the two).
        hold_time_secs: u32,
    },
    /// Changes to the routes the sender announces to the receiver.
    Update {
        /// The sender's generation.
        generation: u64,
        /// New or changed routes.
        #[serde(default)]
        announce: Vec<Route>,
        /// Routes no longer announced.
        #[serde(default)]
        withdraw: Vec<RouteKey>,
    },
    /// Liveness when nothing changes.
    Keepalive,
    /// A message type from a newer release; skipped.
    #[serde(other)]
    Unknown,
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    version: u32,
    #[serde(flatten)]
    msg: &'a Message,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    version: u32,
    #[serde(flatten)]
    msg: Message,
}

/// A frame that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The frame is larger than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The JSON does not parse.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Version 0 or none: not a peering message of any release.
    #[error("unsupported protocol version {0}")]
    Version(u32),
}

/// Encodes a message as one frame: a 4-byte big-endian length, then the JSON.
pub fn encode(msg: &Message) -> Vec<u8> {
    let body = serde_json::to_vec(&EnvelopeOut {
        version: PROTOCOL_VERSION,
        msg,
    })
    // Serializing these types to a Vec cannot fail: no maps with non-string keys, no I/O.
    .unwrap_or_default();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The body length announced by a frame header, checked against [`MAX_FRAME`].
pub fn frame_len(header: [u8; 4]) -> Result<usize, ProtoError> {
    let n = u32::from_be_bytes(header) as usize;
    if n > MAX_FRAME {
        return Err(ProtoError::TooLarge(n));
    }
    Ok(n)
}

/// Decodes a frame body; returns the sender's version with the message.
pub fn decode(body: &[u8]) -> Result<(u32, Message), ProtoError> {
    let env: EnvelopeIn =
        serde_json::from_slice(body).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if env.version == 0 {
        return Err(ProtoError::Version(0));
    }
    Ok((env.version, env.msg))
}

/// Splits a byte buffer into frames (for tests and for readers that get arbitrary chunks):
/// returns the complete frames' bodies and how many bytes they used.
pub fn split_frames(buf: &[u8]) -> Result<(Vec<&[u8]>, usize), ProtoError> {
    let mut frames = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 4 {
        let n = frame_len([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])?;
        if buf.len() - at - 4 < n {
            break;
        }
        frames.push(&buf[at + 4..at + 4 + n]);
        at += 4 + n;
    }
    Ok((frames, at))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn update() -> Message {
        Message::Update {
            generation: 7,
            announce: vec![
                Route {
                    key: RouteKey::Prefix {
                        prefix: "10.3.0.0/16".parse().unwrap(),
                    },
                    path: vec!["b".into(), "c".into()],
                    service: None,
                },
                Route {
                    key: RouteKey::Service {
                        namespace: "shop".into(),
                        name: "cart".into(),
                    },
                    path: vec!["b".into(), "c".into()],
                    service: Some(ServiceAttrs {
                        vip: "10.250.1.7".parse().unwrap(),
                        ports: vec![ServicePort {
                            port: 443,
                            protocol: "tcp".into(),
                        }],
                    }),
                },
            ],
            withdraw: vec![RouteKey::Prefix {
                prefix: "fd00:3::/64".parse().unwrap(),
            }],
        }
    }

    #[test]
    fn frames_round_trip_even_when_split_across_reads() {
        let mut wire = encode(&update());
        wire.extend(encode(&Message::Keepalive));
        let (frames, used) = split_frames(&wire[..wire.len() - 3]).unwrap();
        assert_eq!(
            (frames.len(), used),
            (1, wire.len() - encode(&Message::Keepalive).len())
        );
        let (frames, used) = split_frames(&wire).unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(decode(frames[0]).unwrap(), (1, update()));
        assert_eq!(decode(frames[1]).unwrap(), (1, Message::Keepalive));
    }

    #[test]
    fn the_wire_format_is_the_documented_json() {
        let wire = encode(&Message::Hello {
            gateway_id: "a".into(),
            generation: 3,
            hold_time_secs: 10,
        });
        assert_eq!(
            std::str::from_utf8(&wire[4..]).unwrap(),
            r#"{"version":1,"type":"hello","gateway_id":"a","generation":3,"hold_time_secs":10}"#
        );
    }

    #[test]
    fn a_newer_release_is_understood_as_far_as_this_one_can() {
        // Version 2 with an extra field, and a message type this release does not know.
        let newer = br#"{"version":2,"type":"update","generation":1,"colour":"blue",
            "announce":[{"key":{"kind":"prefix","prefix":"10.9.0.0/16"},"path":["x"],"metric":5}]}"#;
        let (v, m) = decode(newer).unwrap();
        assert_eq!(v, 2);
        let Message::Update {
            announce, withdraw, ..
        } = m
        else {
            panic!()
        };
        assert_eq!(announce[0].path, vec!["x".to_owned()]);
        assert!(withdraw.is_empty());
        let (_, m) = decode(br#"{"version":2,"type":"route_refresh","all":true}"#).unwrap();
        assert_eq!(m, Message::Unknown);
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        assert!(matches!(
            decode(b"{\"type\":\"keepalive\"}"),
            Err(ProtoError::Malformed(_))
        ));
        assert!(matches!(
            decode(br#"{"version":0,"type":"keepalive"}"#),
            Err(ProtoError::Version(0))
        ));
        assert!(decode(b"\xff\xfe").is_err());
        assert!(matches!(
            split_frames(&[0xff, 0xff, 0xff, 0xff]),
            Err(ProtoError::TooLarge(_))
        ));
    }
}
