//! A raw MQTT connection: packets built by hand (with rumqttc's codecs)
//! and written to a plain TCP socket (or a TLS stream over one), so tests
//! can send what no
//! well-behaved client would (a second CONNECT, a forged will, someone
//! else's client id) and see exactly what the broker answers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the broker did next.
#[derive(Debug)]
pub enum Next<P> {
    /// It sent a packet.
    Packet(P),
    /// It closed the connection.
    Closed,
    /// Nothing happened within the wait.
    Quiet,
}

/// A byte stream MQTT can run over: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A socket speaking MQTT 3.1.1 or 5 as the test tells it to.
pub struct RawMqtt {
    stream: Box<dyn Stream>,
    read: BytesMut,
}

/// A will: topic and payload.
pub type Will<'a> = Option<(&'a str, &'a [u8])>;

impl RawMqtt {
    /// Connects, retrying for a few seconds while nothing listens yet.
    pub async fn open(addr: SocketAddr) -> Self {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let stream = loop {
            match TcpStream::connect(addr).await {
                Ok(stream) => break stream,
                Err(e) if tokio::time::Instant::now() > deadline => panic!("connect {addr}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        Self::over(stream)
    }

    /// MQTT over an established stream (a TLS session, say).
    pub fn over(stream: impl Stream + 'static) -> Self {
        Self {
            stream: Box::new(stream),
            read: BytesMut::new(),
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The broker may have closed already; a test asserts on what it reads.
        let _ = self.stream.write_all(bytes).await;
    }

    pub async fn send_v4(&mut self, packet: v4::Packet) {
        let mut buf = BytesMut::new();
        packet.write(&mut buf, usize::MAX).unwrap();
        self.send_bytes(&buf).await;
    }

    pub async fn send_v5(&mut self, packet: v5::Packet) {
        let mut buf = BytesMut::new();
        packet.write(&mut buf, None).unwrap();
        self.send_bytes(&buf).await;
    }

    async fn fill(&mut self, wait: Duration) -> Option<bool> {
        match tokio::time::timeout(wait, self.stream.read_buf(&mut self.read)).await {
            Ok(Ok(0) | Err(_)) => Some(false),
            Ok(Ok(_)) => Some(true),
            Err(_) => None,
        }
    }

    pub async fn next_v4(&mut self, wait: Duration) -> Next<v4::Packet> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Ok(packet) = v4::Packet::read(&mut self.read, 1 << 20) {
                return Next::Packet(packet);
            }
            match self.fill(deadline - tokio::time::Instant::now()).await {
                Some(true) => {}
                Some(false) => return Next::Closed,
                None => return Next::Quiet,
            }
        }
    }

    pub async fn next_v5(&mut self, wait: Duration) -> Next<v5::Packet> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Ok(packet) = v5::Packet::read(&mut self.read, None) {
                return Next::Packet(packet);
            }
            match self.fill(deadline - tokio::time::Instant::now()).await {
                Some(true) => {}
                Some(false) => return Next::Closed,
                None => return Next::Quiet,
            }
        }
    }

    /// Every byte the broker sends until it closes the connection, if it
    /// does within `wait`: for asserting on a packet exactly as sent, where
    /// a client library's decoder would hide or reject a malformed one.
    pub async fn bytes_until_closed(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self
                .fill(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .await
            {
                Some(true) => {}
                Some(false) => return Some(self.read.split().to_vec()),
                None => return None,
            }
        }
    }

    /// Whether the broker closes the connection within `wait` (packets it
    /// sends before closing are skipped).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.read.clear();
            match self
                .fill(deadline.saturating_duration_since(tokio::time::Instant::now()))
                .await
            {
                Some(true) => {}
                Some(false) => return true,
                None => return false,
            }
        }
    }

    /// MQTT 3.1.1 CONNECT; returns the CONNACK, or why there was none.
    pub async fn connect_v4(
        &mut self,
        client_id: &str,
        login: Option<(&str, &str)>,
        will: Will<'_>,
        clean_session: bool,
    ) -> Next<v4::Packet> {
        self.send_v4(connect_v4(client_id, login, will, clean_session))
            .await;
        self.next_v4(Duration::from_secs(5)).await
    }

    /// MQTT 5 CONNECT; returns the CONNACK, or why there was none.
    pub async fn connect_v5(
        &mut self,
        client_id: &str,
        login: Option<(&str, &str)>,
        will: Will<'_>,
    ) -> Next<v5::Packet> {
        self.send_v5(connect_v5(client_id, login, will)).await;
        self.next_v5(Duration::from_secs(5)).await
    }
}

pub fn connect_v4(
    client_id: &str,
    login: Option<(&str, &str)>,
    will: Will<'_>,
    clean_session: bool,
) -> v4::Packet {
    let mut connect = v4::Connect::new(client_id);
    connect.keep_alive = 30;
    connect.clean_session = clean_session;
    if let Some((u, p)) = login {
        connect.set_login(u, p);
    }
    connect.last_will = will.map(|(topic, payload)| {
        v4::LastWill::new(topic, payload.to_vec(), rumqttc::QoS::AtLeastOnce, false)
    });
    v4::Packet::Connect(connect)
}

pub fn connect_v5(client_id: &str, login: Option<(&str, &str)>, will: Will<'_>) -> v5::Packet {
    let mut connect = v5::Connect {
        keep_alive: 30,
        client_id: client_id.to_owned(),
        clean_start: true,
        properties: None,
    };
    connect.keep_alive = 30;
    let login = login.map(|(u, p)| v5::Login::new(u, p));
    let will = will.map(|(topic, payload)| {
        v5::LastWill::new(
            topic,
            payload.to_vec(),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            None,
        )
    });
    v5::Packet::Connect(connect, will, login)
}

pub fn publish_v4(topic: &str, payload: impl Into<Vec<u8>>, pkid: u16) -> v4::Packet {
    let mut publish = v4::Publish::new(topic, rumqttc::QoS::AtLeastOnce, payload.into());
    publish.pkid = pkid;
    v4::Packet::Publish(publish)
}

pub fn publish_v5(topic: &str, payload: impl Into<Vec<u8>>, pkid: u16) -> v5::Packet {
    let mut publish = v5::Publish::new(
        topic,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        payload.into(),
        None,
    );
    publish.pkid = pkid;
    v5::Packet::Publish(publish)
}

pub fn subscribe_v4(filter: &str, pkid: u16) -> v4::Packet {
    let mut subscribe = v4::Subscribe::new(filter, rumqttc::QoS::AtLeastOnce);
    subscribe.pkid = pkid;
    v4::Packet::Subscribe(subscribe)
}

pub fn subscribe_v5(filter: &str, pkid: u16) -> v5::Packet {
    let mut subscribe = v5::Subscribe::new(
        v5::Filter::new(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
        None,
    );
    subscribe.pkid = pkid;
    v5::Packet::Subscribe(subscribe)
}

/// Whether a CONNACK accepted the connection.
pub fn accepted_v4(next: &Next<v4::Packet>) -> bool {
    matches!(next, Next::Packet(v4::Packet::ConnAck(ack)) if ack.code == v4::ConnectReturnCode::Success)
}

/// Whether a CONNACK accepted the connection.
pub fn accepted_v5(next: &Next<v5::Packet>) -> bool {
    matches!(next, Next::Packet(v5::Packet::ConnAck(ack)) if ack.code == v5::ConnectReturnCode::Success)
}
