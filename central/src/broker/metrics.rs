//! The embedded broker's counters, exported on central's `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a connection was refused before it was accepted (each has a counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the connection limit.
    Limit,
    /// The TLS handshake failed (no client certificate, another CA, bad TLS).
    Tls,
    /// No TLS handshake and CONNECT within the handshake timeout.
    HandshakeTimeout,
    /// The first packet was not a well-formed MQTT 3.1.1 CONNECT.
    Protocol,
    /// The certificate has no usable common name.
    NoCommonName,
    /// The CONNECT client id is not the certificate's common name.
    ClientId,
    /// The common name is neither central's nor a registered gateway's.
    UnknownGateway,
    /// Every key of the gateway is revoked or expired.
    Revoked,
    /// The last will names a topic the client may not publish on.
    Will,
    /// The registry could not be read.
    Registry,
}

impl Refusal {
    /// All reasons, in counter order.
    pub const ALL: [Refusal; 10] = [
        Refusal::Limit,
        Refusal::Tls,
        Refusal::HandshakeTimeout,
        Refusal::Protocol,
        Refusal::NoCommonName,
        Refusal::ClientId,
        Refusal::UnknownGateway,
        Refusal::Revoked,
        Refusal::Will,
        Refusal::Registry,
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Limit => "connection_limit",
            Refusal::Tls => "tls",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::Protocol => "protocol",
            Refusal::NoCommonName => "no_common_name",
            Refusal::ClientId => "client_id",
            Refusal::UnknownGateway => "unknown_gateway",
            Refusal::Revoked => "revoked",
            Refusal::Will => "will_topic",
            Refusal::Registry => "registry",
        }
    }
}

/// Why an accepted connection ended (each has a counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The client sent DISCONNECT (no will).
    Client,
    /// The connection closed or failed without DISCONNECT.
    Network,
    /// Nothing received for 1.5 x the keep-alive.
    KeepAlive,
    /// Another connection with the same client id took over (no will).
    Takeover,
    /// Its queue was full: it could not keep up with what it subscribed to.
    SlowConsumer,
    /// A malformed or unexpected packet.
    Protocol,
    /// A packet over the maximum size.
    Oversize,
    /// A publish on a topic it may not use (never forwarded).
    Forbidden,
    /// Its gateway was revoked or removed from the registry while connected.
    Revoked,
    /// The broker is stopping (no will).
    Shutdown,
}

impl Disconnect {
    /// All reasons, in counter order.
    pub const ALL: [Disconnect; 10] = [
        Disconnect::Client,
        Disconnect::Network,
        Disconnect::KeepAlive,
        Disconnect::Takeover,
        Disconnect::SlowConsumer,
        Disconnect::Protocol,
        Disconnect::Oversize,
        Disconnect::Forbidden,
        Disconnect::Revoked,
        Disconnect::Shutdown,
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Disconnect::Client => "client",
            Disconnect::Network => "network",
            Disconnect::KeepAlive => "keep_alive",
            Disconnect::Takeover => "takeover",
            Disconnect::SlowConsumer => "slow_consumer",
            Disconnect::Protocol => "protocol",
            Disconnect::Oversize => "oversize",
            Disconnect::Forbidden => "forbidden_publish",
            Disconnect::Revoked => "revoked",
            Disconnect::Shutdown => "shutdown",
        }
    }

    /// True when the will is published: the client went away without saying goodbye.
    pub fn publishes_will(self) -> bool {
        !matches!(self, Disconnect::Client | Disconnect::Takeover | Disconnect::Shutdown)
    }
}

/// The broker's counters (lock-free).
#[derive(Debug, Default)]
pub struct BrokerMetrics {
    /// Connections accepted (CONNACK success).
    pub connections: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Refusals, indexed like [`Refusal::ALL`].
    pub refused: [AtomicU64; 10],
    /// Disconnects, indexed like [`Disconnect::ALL`].
    pub disconnects: [AtomicU64; 10],
    /// Publishes received and allowed.
    pub messages_in: AtomicU64,
    /// Publishes written to subscribers.
    pub messages_out: AtomicU64,
    /// Bytes read from clients (after TLS).
    pub bytes_in: AtomicU64,
    /// Bytes written to clients (before TLS).
    pub bytes_out: AtomicU64,
    /// Publishes refused by the ACL (never forwarded).
    pub publish_forbidden: AtomicU64,
    /// Subscriptions refused by the ACL (SUBACK failure code).
    pub subscribe_forbidden: AtomicU64,
    /// Wills published.
    pub wills: AtomicU64,
    /// Retained messages held now.
    pub retained: AtomicU64,
    /// Retained messages refused because the store is full.
    pub retained_refused: AtomicU64,
    /// Failed writes of the retained-message file.
    pub retained_write_errors: AtomicU64,
}

impl BrokerMetrics {
    /// Counts a refusal.
    pub fn refuse(&self, r: Refusal) {
        if let Some(i) = Refusal::ALL.iter().position(|x| *x == r) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refusals for `r`.
    pub fn refused(&self, r: Refusal) -> u64 {
        Refusal::ALL.iter().position(|x| *x == r).map_or(0, |i| self.refused[i].load(Ordering::Relaxed))
    }

    /// Counts a disconnect.
    pub fn disconnect(&self, d: Disconnect) {
        if let Some(i) = Disconnect::ALL.iter().position(|x| *x == d) {
            self.disconnects[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Disconnects for `d`.
    pub fn disconnects(&self, d: Disconnect) -> u64 {
        Disconnect::ALL.iter().position(|x| *x == d).map_or(0, |i| self.disconnects[i].load(Ordering::Relaxed))
    }

    /// Prometheus text exposition.
    pub fn prometheus(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        for (name, v) in [
            ("vigil_broker_connections_total", g(&self.connections)),
            ("vigil_broker_connections_open", g(&self.connections_open)),
            ("vigil_broker_messages_in_total", g(&self.messages_in)),
            ("vigil_broker_messages_out_total", g(&self.messages_out)),
            ("vigil_broker_bytes_in_total", g(&self.bytes_in)),
            ("vigil_broker_bytes_out_total", g(&self.bytes_out)),
            ("vigil_broker_publish_forbidden_total", g(&self.publish_forbidden)),
            ("vigil_broker_subscribe_forbidden_total", g(&self.subscribe_forbidden)),
            ("vigil_broker_wills_total", g(&self.wills)),
            ("vigil_broker_retained", g(&self.retained)),
            ("vigil_broker_retained_refused_total", g(&self.retained_refused)),
            ("vigil_broker_retained_write_errors_total", g(&self.retained_write_errors)),
        ] {
            s.push_str(&format!("{name} {v}\n"));
        }
        for r in Refusal::ALL {
            s.push_str(&format!("vigil_broker_refused_total{{reason=\"{}\"}} {}\n", r.label(), self.refused(r)));
        }
        for d in Disconnect::ALL {
            s.push_str(&format!(
                "vigil_broker_disconnects_total{{reason=\"{}\"}} {}\n",
                d.label(),
                self.disconnects(d)
            ));
        }
        s
    }
}
