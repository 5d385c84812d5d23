//! One client connection: TLS handshake and CONNECT within a deadline, identity from the certificate,
//! then a reader (this task: ACL, routing, keep-alive) and a writer task (batched writes, QoS 1
//! packet ids bounded by the in-flight limit, write timeout). The will is published when the
//! connection ends abnormally.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::Error as CodecError;
use rumqttc::{ConnAck, Connect, ConnectReturnCode, Packet, PubAck, QoS, SubAck, SubscribeReasonCode, UnsubAck};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use vigil_common::GatewayId;

use super::acl::{Identity, valid_filter, valid_topic};
use super::metrics::{BrokerMetrics, Disconnect, Refusal};
use super::router::{Kill, Out, Router};
use crate::store::{GatewayKeys, Registry};

/// Per-connection limits.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) max_packet: usize,
    pub(crate) queue_len: usize,
    pub(crate) max_inflight: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_keep_alive_s: u16,
    pub(crate) write_timeout: Duration,
}

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) router: Router,
    pub(crate) metrics: Arc<BrokerMetrics>,
    pub(crate) limits: Limits,
    pub(crate) registry: Registry,
    pub(crate) central_cn: String,
    pub(crate) next_conn: AtomicU64,
}

/// Why reading a packet failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// Over the maximum packet size (the declared length; the body is never read).
    Oversize(usize),
    /// Not a well-formed MQTT 3.1.1 packet.
    Protocol(String),
    /// The stream failed or ended inside a packet.
    Network(String),
}

/// The most bytes taken from the socket per read.
pub(crate) const READ_CHUNK: u64 = 16 * 1024;

/// Reads one packet, buffering in `buf` (which keeps any bytes of the next packet). `Ok(None)` on a
/// clean end of stream between packets. Never buffers more than one packet of at most `max` bytes
/// plus one read of at most [`READ_CHUNK`] bytes.
pub(crate) async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
    metrics: &BrokerMetrics,
) -> Result<Option<Packet>, ReadError> {
    loop {
        if !buf.is_empty() {
            match Packet::read(buf, max) {
                Ok(p) => return Ok(Some(p)),
                Err(CodecError::InsufficientBytes(_)) => {}
                Err(CodecError::PayloadSizeLimitExceeded(n)) => return Err(ReadError::Oversize(n)),
                Err(e) => return Err(ReadError::Protocol(e.to_string())),
            }
        }
        buf.reserve(READ_CHUNK as usize);
        let n = (&mut *r).take(READ_CHUNK).read_buf(buf).await.map_err(|e| ReadError::Network(e.to_string()))?;
        if n == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(ReadError::Network("closed inside a packet".into())) };
        }
        metrics.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A gateway may connect while it is registered and has a key that is neither revoked nor expired.
pub(crate) fn gateway_allowed(keys: Option<&GatewayKeys>, now_ms: i64) -> Result<(), Refusal> {
    let g = keys.ok_or(Refusal::UnknownGateway)?;
    let live = g
        .keys
        .iter()
        .any(|(_, _, _, until, revoked)| until.is_none_or(|u| now_ms < u) && revoked.is_none_or(|r| now_ms < r));
    if live { Ok(()) } else { Err(Refusal::Revoked) }
}

async fn identify(sh: &Shared, cn: &str) -> Result<Identity, Refusal> {
    if cn == sh.central_cn {
        return Ok(Identity::Central);
    }
    let id = GatewayId::new(cn).map_err(|_| Refusal::UnknownGateway)?;
    let keys = sh.registry.load_keys().await.map_err(|e| {
        tracing::error!(error = %e, "broker: cannot read the gateway registry");
        Refusal::Registry
    })?;
    let g = keys.get(&id);
    gateway_allowed(g, crate::ingest::now_ms())?;
    let enterprise = g.map(|g| g.enterprise.clone()).ok_or(Refusal::UnknownGateway)?;
    Ok(Identity::Gateway { enterprise, id })
}

type Stream = TlsStream<TcpStream>;

struct Accepted {
    stream: Stream,
    buf: BytesMut,
    connect: Connect,
    identity: Identity,
}

async fn refuse_connect(stream: &mut Stream, code: ConnectReturnCode) {
    let mut b = BytesMut::new();
    if Packet::ConnAck(ConnAck::new(code, false)).write(&mut b, usize::MAX).is_ok() {
        let _ = stream.write_all(&b).await;
        let _ = stream.shutdown().await;
    }
}

async fn handshake(tcp: TcpStream, sh: &Shared) -> Result<Accepted, (Refusal, String)> {
    let mut stream = sh.acceptor.accept(tcp).await.map_err(|e| (Refusal::Tls, e.to_string()))?;
    let cn = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| super::tls::common_name(c))
        .ok_or((Refusal::NoCommonName, "client certificate without a common name".into()))?;
    let mut buf = BytesMut::with_capacity(4096);
    let first = read_packet(&mut stream, &mut buf, sh.limits.max_packet, &sh.metrics).await;
    let connect = match first {
        Ok(Some(Packet::Connect(c))) => c,
        Ok(other) => return Err((Refusal::Protocol, format!("cn {cn}: first packet is not CONNECT: {other:?}"))),
        Err(e) => return Err((Refusal::Protocol, format!("cn {cn}: {e:?}"))),
    };
    if connect.protocol != rumqttc::Protocol::V4 {
        refuse_connect(&mut stream, ConnectReturnCode::RefusedProtocolVersion).await;
        return Err((Refusal::Protocol, format!("cn {cn}: only MQTT 3.1.1 is served")));
    }
    if connect.client_id != cn {
        refuse_connect(&mut stream, ConnectReturnCode::BadClientId).await;
        return Err((Refusal::ClientId, format!("client id {:?} is not the certificate CN {cn:?}", connect.client_id)));
    }
    let identity = match identify(sh, &cn).await {
        Ok(i) => i,
        Err(r) => {
            refuse_connect(&mut stream, ConnectReturnCode::NotAuthorized).await;
            return Err((r, format!("client {cn}")));
        }
    };
    if let Some(w) = &connect.last_will
        && !(valid_topic(&w.topic) && identity.may_publish(&w.topic))
    {
        refuse_connect(&mut stream, ConnectReturnCode::NotAuthorized).await;
        return Err((Refusal::Will, format!("client {cn}: will topic {:?} not allowed", w.topic)));
    }
    Ok(Accepted { stream, buf, connect, identity })
}

/// Serves one TCP connection to its end; `_permit` holds its place under the connection limit.
pub(crate) async fn serve(tcp: TcpStream, peer: SocketAddr, sh: Arc<Shared>, _permit: OwnedSemaphorePermit) {
    let accepted = match tokio::time::timeout(sh.limits.handshake_timeout, handshake(tcp, &sh)).await {
        Ok(Ok(a)) => a,
        Ok(Err((reason, detail))) => {
            sh.metrics.refuse(reason);
            tracing::warn!(%peer, reason = reason.label(), detail, "broker: connection refused");
            return;
        }
        Err(_) => {
            sh.metrics.refuse(Refusal::HandshakeTimeout);
            tracing::warn!(%peer, "broker: no TLS handshake and CONNECT within the handshake timeout");
            return;
        }
    };
    session(accepted, peer, sh).await;
}

/// QoS 1 packet ids in flight towards the client, bounded by a semaphore.
struct Inflight {
    permits: Semaphore,
    ids: Mutex<(u16, HashSet<u16>)>,
}

impl Inflight {
    fn next_id(&self) -> u16 {
        let mut g = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let (next, used) = &mut *g;
        // At most max_inflight (< 65535) ids are used, so a free one is found.
        loop {
            *next = next.wrapping_add(1);
            if *next != 0 && used.insert(*next) {
                return *next;
            }
        }
    }

    fn ack(&self, pkid: u16) {
        if self.ids.lock().unwrap_or_else(|p| p.into_inner()).1.remove(&pkid) {
            self.permits.add_permits(1);
        }
    }
}

/// Sends a control packet, or gives up when the connection is being ended.
async fn control(
    ctl: &mpsc::Sender<Out>,
    out: Out,
    killed: &mut watch::Receiver<Option<Disconnect>>,
) -> Result<(), Disconnect> {
    tokio::select! {
        r = ctl.send(out) => r.map_err(|_| Disconnect::Network),
        _ = killed.changed() => Err(killed.borrow().unwrap_or(Disconnect::Network)),
    }
}

async fn session(a: Accepted, peer: SocketAddr, sh: Arc<Shared>) {
    let Accepted { stream, mut buf, connect, identity } = a;
    let conn = sh.next_conn.fetch_add(1, Ordering::Relaxed);
    let client = connect.client_id.clone();
    let (kill, mut killed) = Kill::new();
    let (tx, rx) = mpsc::channel(sh.limits.queue_len.max(1));
    let (ctl, ctl_rx) = mpsc::channel(256);
    let inflight = Arc::new(Inflight {
        permits: Semaphore::new(sh.limits.max_inflight.clamp(1, 65_000)),
        ids: Mutex::new((0, HashSet::new())),
    });
    let (mut rd, wr) = tokio::io::split(stream);
    sh.router.register(&client, conn, identity.clone(), kill.clone());
    sh.metrics.connections.fetch_add(1, Ordering::Relaxed);
    sh.metrics.connections_open.fetch_add(1, Ordering::Relaxed);
    tracing::info!(client, %peer, "broker: client connected");
    let writer = tokio::spawn(write_loop(wr, ctl_rx, rx, inflight.clone(), kill.clone(), sh.clone()));
    let ka = match connect.keep_alive {
        0 => sh.limits.max_keep_alive_s,
        k => k.min(sh.limits.max_keep_alive_s),
    };
    let idle = Duration::from_millis(u64::from(ka) * 1500);
    let mut why =
        control(&ctl, Out::Control(Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false))), &mut killed)
            .await
            .err();
    while why.is_none() {
        let read = tokio::select! {
            biased;
            _ = killed.changed() => { why = Some(killed.borrow().unwrap_or(Disconnect::Network)); break; }
            r = tokio::time::timeout(idle, read_packet(&mut rd, &mut buf, sh.limits.max_packet, &sh.metrics)) => r,
        };
        let packet = match read {
            Err(_) => {
                why = Some(Disconnect::KeepAlive);
                break;
            }
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) => {
                why = Some(Disconnect::Network);
                break;
            }
            Ok(Err(e)) => {
                tracing::warn!(client, error = ?e, "broker: bad packet");
                why = Some(match e {
                    ReadError::Oversize(_) => Disconnect::Oversize,
                    ReadError::Protocol(_) => Disconnect::Protocol,
                    ReadError::Network(_) => Disconnect::Network,
                });
                break;
            }
        };
        let step = match packet {
            Packet::Publish(p) => {
                if !valid_topic(&p.topic) || p.qos == QoS::ExactlyOnce {
                    tracing::warn!(client, topic = %p.topic, qos = ?p.qos, "broker: invalid topic or QoS 2 (not served)");
                    Err(Disconnect::Protocol)
                } else if !identity.may_publish(&p.topic) {
                    sh.metrics.publish_forbidden.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(client, topic = %p.topic, "broker: publish outside the client's own topics refused");
                    Err(Disconnect::Forbidden)
                } else {
                    sh.router.publish(&p.topic, p.qos, p.retain, p.payload);
                    if p.qos == QoS::AtLeastOnce {
                        control(&ctl, Out::Control(Packet::PubAck(PubAck::new(p.pkid))), &mut killed).await
                    } else {
                        Ok(())
                    }
                }
            }
            Packet::Subscribe(s) if !s.filters.is_empty() => {
                let mut codes = Vec::with_capacity(s.filters.len());
                let mut retained = Vec::new();
                for f in &s.filters {
                    if valid_filter(&f.path) && identity.may_subscribe(&f.path) {
                        let granted = if f.qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
                        sh.router.subscribe(conn, &f.path, granted, tx.clone(), kill.clone());
                        retained.extend(sh.router.retained.matching(&f.path, granted));
                        codes.push(SubscribeReasonCode::Success(granted));
                    } else {
                        sh.metrics.subscribe_forbidden.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(client, filter = %f.path, "broker: subscription refused");
                        codes.push(SubscribeReasonCode::Failure);
                    }
                }
                let mut r = control(&ctl, Out::Control(Packet::SubAck(SubAck::new(s.pkid, codes))), &mut killed).await;
                for p in retained {
                    if r.is_ok() {
                        r = control(&ctl, Out::Deliver(p), &mut killed).await;
                    }
                }
                r
            }
            Packet::Unsubscribe(u) => {
                for t in &u.topics {
                    sh.router.unsubscribe(conn, t);
                }
                control(&ctl, Out::Control(Packet::UnsubAck(UnsubAck::new(u.pkid))), &mut killed).await
            }
            Packet::PingReq => control(&ctl, Out::Control(Packet::PingResp), &mut killed).await,
            Packet::PubAck(a) => {
                inflight.ack(a.pkid);
                Ok(())
            }
            Packet::Disconnect => Err(Disconnect::Client),
            other => {
                tracing::warn!(client, packet = ?other, "broker: unexpected packet");
                Err(Disconnect::Protocol)
            }
        };
        why = step.err();
    }
    let why = why.unwrap_or(Disconnect::Network);
    sh.router.unregister(&client, conn);
    // Counted before the writer closes the socket, so a peer that sees the close sees the count.
    sh.metrics.disconnect(why);
    kill.kill(why);
    drop((tx, ctl));
    if why.publishes_will()
        && let Some(w) = connect.last_will
    {
        sh.metrics.wills.fetch_add(1, Ordering::Relaxed);
        sh.router.publish(&w.topic, w.qos, w.retain, w.message);
    }
    sh.metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
    tracing::info!(client, reason = why.label(), will = why.publishes_will(), "broker: client disconnected");
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(2), &mut writer).await.is_err() {
        writer.abort();
    }
}

/// Writes control packets (first) and deliveries in batches until the connection is ended.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut ctl: mpsc::Receiver<Out>,
    mut rx: mpsc::Receiver<Out>,
    inflight: Arc<Inflight>,
    kill: Kill,
    sh: Arc<Shared>,
) {
    let mut killed = kill.subscribe();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'outer: loop {
        if killed.borrow().is_some() {
            break;
        }
        let first = tokio::select! {
            biased;
            _ = killed.changed() => break,
            Some(o) = ctl.recv() => (o, None),
            (permit, o) = async {
                let permit = inflight.permits.acquire().await;
                (permit, rx.recv().await)
            } => match o {
                Some(o) => (o, permit.ok()),
                None => break,
            },
        };
        let mut n = 0usize;
        let mut next = Some(first);
        while let Some((o, permit)) = next.take() {
            let packet = match o {
                Out::Control(p) => p,
                Out::Deliver(mut p) => {
                    if p.qos == QoS::AtLeastOnce {
                        match permit {
                            Some(permit) => permit.forget(),
                            // A retained message sent on subscribe: wait for room in flight.
                            None => match inflight.permits.acquire().await {
                                Ok(permit) => permit.forget(),
                                Err(_) => break 'outer,
                            },
                        }
                        p.pkid = inflight.next_id();
                    }
                    sh.metrics.messages_out.fetch_add(1, Ordering::Relaxed);
                    Packet::Publish(p)
                }
            };
            if packet.write(&mut buf, usize::MAX).is_err() {
                tracing::error!(packet = ?packet, "broker: cannot encode a packet");
            }
            n += 1;
            if buf.len() >= 64 * 1024 || n >= 1024 {
                break;
            }
            next = match ctl.try_recv() {
                Ok(o) => Some((o, None)),
                Err(_) => match inflight.permits.try_acquire() {
                    Ok(permit) => rx.try_recv().ok().map(|o| (o, Some(permit))),
                    Err(_) => None,
                },
            };
        }
        let len = buf.len();
        let written = tokio::time::timeout(sh.limits.write_timeout, async {
            wr.write_all(&buf).await?;
            wr.flush().await
        })
        .await;
        buf.clear();
        match written {
            Ok(Ok(())) => {
                sh.metrics.bytes_out.fetch_add(len as u64, Ordering::Relaxed);
            }
            _ => {
                kill.kill(Disconnect::Network);
                break 'outer;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(bytes: &[u8], chunk: usize, max: usize) -> (Vec<Packet>, Option<ReadError>) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let (mut client, mut server) = tokio::io::duplex(chunk.max(1));
            let data = bytes.to_vec();
            let feeder = tokio::spawn(async move {
                for c in data.chunks(chunk.max(1)) {
                    if client.write_all(c).await.is_err() {
                        return;
                    }
                }
            });
            let m = BrokerMetrics::default();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let err = loop {
                match read_packet(&mut server, &mut buf, max, &m).await {
                    Ok(Some(p)) => out.push(p),
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
                assert!(buf.len() <= max + 5 + READ_CHUNK as usize, "buffered beyond one packet and one read");
            };
            drop(server);
            let _ = feeder.await;
            (out, err)
        })
    }

    #[test]
    fn packets_split_anywhere_are_read_whole_and_oversize_is_refused_before_its_body() {
        let mut bytes = BytesMut::new();
        let mut c = Connect::new("gw-1");
        c.keep_alive = 5;
        Packet::Connect(c.clone()).write(&mut bytes, usize::MAX).unwrap();
        let mut p = rumqttc::Publish::new("vigil/v1/e/gw-1/up/batch", QoS::AtLeastOnce, vec![7u8; 300]);
        p.pkid = 9;
        Packet::Publish(p.clone()).write(&mut bytes, usize::MAX).unwrap();
        Packet::PingReq.write(&mut bytes, usize::MAX).unwrap();
        for chunk in [1, 2, 7, 4096] {
            let (got, err) = read_all(&bytes, chunk, 1024);
            assert_eq!(err, None);
            assert_eq!(got, vec![Packet::Connect(c.clone()), Packet::Publish(p.clone()), Packet::PingReq]);
        }
        let (got, err) = read_all(&bytes, 3, 100);
        assert_eq!(got.len(), 1);
        assert!(matches!(err, Some(ReadError::Oversize(_))), "{err:?}");
        let (_, err) = read_all(&bytes[..bytes.len() - 1], 5, 1024);
        assert!(matches!(err, Some(ReadError::Network(_))), "{err:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn garbage_never_panics_nor_buffers_beyond_the_limit(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            chunk in 1usize..64,
            max in 0usize..512,
        ) {
            let _ = read_all(&bytes, chunk, max);
        }

        #[test]
        fn garbage_after_a_valid_header_never_panics(
            kind in 0u8..16, flags in 0u8..16,
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = vec![(kind << 4) | flags];
            let mut len = body.len();
            loop {
                let mut b = (len % 128) as u8;
                len /= 128;
                if len > 0 { b |= 0x80; }
                bytes.push(b);
                if len == 0 { break; }
            }
            bytes.extend(body);
            let _ = read_all(&bytes, 16, 1024);
        }
    }
}
