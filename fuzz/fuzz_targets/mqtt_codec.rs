//! Fuzz target for the embedded broker's MQTT codecs (the vendored rumqttd's
//! `V4` and `V5`): arbitrary bytes as they arrive from a socket.
//!
//! Input layout: byte 0 selects the reading codec (bit 0: 0 = MQTT 3.1.1,
//! 1 = MQTT 5), the rest is the stream. Every packet the codec decodes is
//! then written back by the same codec, and a PUBLISH by both codecs too, as
//! the router does when a message published on one listener goes to a
//! subscriber on the other. (Only PUBLISH crosses: the router answers every
//! other packet itself, in the connection's own version.)
//!
//! Invariants: reading never panics and never loops (each decoded packet
//! consumes bytes); writing never panics; and a packet the reading codec
//! writes back is read again by it as the same packet.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rumqttd::protocol::{Packet, Protocol, v4::V4, v5::V5};

/// rumqttd's default incoming packet limit is larger; a small one reaches
/// the size check too.
const MAX_SIZE: usize = 4096;

fn decode_all(protocol: &mut dyn Protocol, stream: &mut BytesMut) {
    loop {
        let before = stream.len();
        let Ok(packet) = protocol.read_mut(stream, MAX_SIZE) else {
            return;
        };
        assert!(stream.len() < before, "{packet:?} consumed no bytes");
        if matches!(packet, Packet::Publish(..)) {
            for writer in [&V4 as &dyn Protocol, &V5] {
                let mut out = BytesMut::new();
                let _ = writer.write(packet.clone(), &mut out);
            }
        }
        let mut out = BytesMut::new();
        if protocol.write(packet.clone(), &mut out).is_ok() {
            let mut again = out.clone();
            match protocol.read_mut(&mut again, usize::MAX) {
                Ok(reread) => assert_eq!(reread, packet, "written as {out:x?}"),
                Err(e) => panic!("{packet:?}, written as {out:x?}, does not read back: {e}"),
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let mut stream = BytesMut::from(stream);
    if selector & 1 == 0 {
        decode_all(&mut V4, &mut stream);
    } else {
        decode_all(&mut V5, &mut stream);
    }
});
