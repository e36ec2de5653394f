//! The embedded broker's MQTT codecs (the vendored rumqttd's `V4` and `V5`)
//! on the inputs that broke them: each panicked, hung or misread before its
//! fix (rumqttd/FLEETPIPE_PATCHES.md). `fuzz/mqtt_codec` found some; the
//! attack tests in `fleetpipe/tests` show the same through a socket.
//! Pure: bytes in, packets out, no runtime.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Error, Packet, Protocol};

fn read(protocol: &mut dyn Protocol, bytes: &[u8]) -> Result<Packet, Error> {
    protocol.read_mut(&mut BytesMut::from(bytes), 1 << 16)
}

fn written(protocol: &dyn Protocol, packet: Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    protocol.write(packet, &mut out).unwrap();
    out.to_vec()
}

#[test]
fn server_packets_from_a_client_are_errors_not_panics() {
    // CONNACK and UNSUBACK with a body: the v5 decoder has no reader for
    // them and reached `unreachable!()`.
    for bytes in [
        &[0x20, 0x03, 0x00, 0x00, 0x00][..],
        &[0xB0, 0x04, 0x00, 0x01, 0x00, 0x00],
    ] {
        assert!(
            matches!(read(&mut V5, bytes), Err(Error::InvalidPacketType(_))),
            "{bytes:x?}"
        );
    }
}

#[test]
fn a_publish_with_mqtt5_properties_is_written_to_mqtt_3_1_1_without_them() {
    // An MQTT 5 QoS 0 PUBLISH to "t" with payload "p" and a user property
    // a=2, as a v5 client sends it.
    let v5_bytes = [
        0x30, 0x0C, 0x00, 0x01, b't', 0x07, 0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'2', b'p',
    ];
    let packet = read(&mut V5, &v5_bytes).unwrap();
    let Packet::Publish(publish, Some(properties)) = &packet else {
        panic!("not a publish with properties: {packet:?}");
    };
    assert_eq!(properties.user_properties, [("a".into(), "2".into())]);
    // To a 3.1.1 subscriber (one router serves both listeners): it was
    // `unreachable!()`, so a v5 publisher panicked every v4 subscriber.
    let bytes = written(&V4, packet.clone());
    assert_eq!(bytes, written(&V4, Packet::Publish(publish.clone(), None)));
    assert_eq!(bytes, [0x30, 0x04, 0x00, 0x01, b't', b'p']);
}

#[test]
fn an_mqtt5_disconnect_of_remaining_length_1_is_written_and_read() {
    let disconnect = Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::DisconnectWithWillMessage,
        },
        None,
    );
    // Written as its Remaining Length says (one byte more before).
    let bytes = written(&V5, disconnect.clone());
    assert_eq!(bytes, [0xE0, 0x01, 0x04]);
    // And read (it asked for one more byte, which never comes).
    assert_eq!(read(&mut V5, &bytes).unwrap(), disconnect);
}

#[test]
fn every_subscription_identifier_of_a_publish_is_read() {
    // Three identifiers (2, 2 and 1 byte long) in 8 bytes of properties,
    // then an empty payload: the second and third were lost or read as
    // payload, each identifier's type byte being counted twice.
    let bytes = [
        0x31, 0x0B, 0x00, 0x00, 0x08, 0x0B, 0xF4, 0x23, 0x0B, 0xD2, 0x33, 0x0B, 0x01,
    ];
    let Packet::Publish(publish, Some(properties)) = read(&mut V5, &bytes).unwrap() else {
        panic!("not a publish with properties");
    };
    assert_eq!(properties.subscription_identifiers, [4596, 6610, 1]);
    assert!(publish.payload.is_empty());
}
