//! ONVIF events over a PullPoint subscription: `CreatePullPointSubscription`, a `PullMessages`
//! loop, `Renew` at half the lifetime, `Unsubscribe` on shutdown. SOAP 1.2 over HTTP with a
//! WS-Security UsernameToken (PasswordDigest = Base64(SHA-1(nonce + created + password))).
//!
//! A camera that reboots forgets its subscriptions: any failed exchange drops the subscription and
//! a new one is created with exponential backoff (counted in `onvif_resubscribes`).

use std::hash::{Hash as _, Hasher as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hyper::http::Method;
use sha1::{Digest as _, Sha1};
use tokio::sync::watch;

use super::client::{self, FetchError};
use super::model::{Items, format_rfc3339_ms, parse_rfc3339_ms};
use super::xml::{self, Element, escape};
use super::{Camera, Hub, OnvifCamera};
use crate::spool::now_ms;

/// SOAP 1.2 envelope namespace.
pub const NS_SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
/// WS-Security secext namespace.
pub const NS_WSSE: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
/// WS-Security utility namespace.
pub const NS_WSU: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
/// PasswordDigest type URI.
pub const PASSWORD_DIGEST: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest";
const NONCE_TYPE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary";
/// ONVIF event WSDL namespace.
pub const NS_TEV: &str = "http://www.onvif.org/ver10/events/wsdl";
/// WS-BaseNotification namespace.
pub const NS_WSNT: &str = "http://docs.oasis-open.org/wsn/b-2";
/// ONVIF device WSDL namespace.
pub const NS_TDS: &str = "http://www.onvif.org/ver10/device/wsdl";
/// WS-Addressing namespace.
pub const NS_WSA: &str = "http://www.w3.org/2005/08/addressing";

const ACTION_CREATE: &str = "http://www.onvif.org/ver10/events/wsdl/EventPortType/CreatePullPointSubscriptionRequest";
const ACTION_PULL: &str = "http://www.onvif.org/ver10/events/wsdl/PullPointSubscription/PullMessagesRequest";
const ACTION_RENEW: &str = "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/RenewRequest";
const ACTION_UNSUBSCRIBE: &str = "http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/UnsubscribeRequest";
const ACTION_TIME: &str = "http://www.onvif.org/ver10/device/wsdl/GetSystemDateAndTime";

/// Largest SOAP answer read.
const MAX_SOAP_BYTES: usize = 1024 * 1024;
/// Most messages asked for per pull.
const MESSAGE_LIMIT: u32 = 64;

/// Why an ONVIF exchange failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OnvifError {
    /// Transport.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The answer is not XML.
    #[error(transparent)]
    Xml(#[from] xml::XmlError),
    /// A SOAP fault.
    #[error("SOAP fault: {0}")]
    Fault(String),
    /// An HTTP error status without a SOAP fault.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The answer lacks an element it must have.
    #[error("answer without {0}")]
    Missing(&'static str),
}

/// `Base64(SHA-1(nonce + created + password))`, the WS-Security PasswordDigest.
pub fn password_digest(nonce: &[u8], created: &str, password: &str) -> String {
    let mut h = Sha1::new();
    h.update(nonce);
    h.update(created.as_bytes());
    h.update(password.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A UsernameToken as read from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsernameToken {
    /// User.
    pub user: String,
    /// The PasswordDigest (Base64).
    pub digest: String,
    /// The nonce, decoded.
    pub nonce: Vec<u8>,
    /// The `Created` time as sent.
    pub created: String,
}

impl UsernameToken {
    /// Reads the token from a SOAP envelope, if it has one.
    pub fn read(envelope: &Element) -> Option<UsernameToken> {
        let t = envelope.child("Header")?.find("Security")?.find("UsernameToken")?;
        let nonce = base64::engine::general_purpose::STANDARD.decode(t.child("Nonce")?.text.as_bytes()).ok()?;
        Some(UsernameToken {
            user: t.child("Username")?.text.clone(),
            digest: t.child("Password")?.text.clone(),
            nonce,
            created: t.child("Created")?.text.clone(),
        })
    }

    /// Whether the token proves `password` for `user`.
    pub fn verifies(&self, user: &str, password: &str) -> bool {
        self.user == user && password_digest(&self.nonce, &self.created, password) == self.digest
    }
}

fn security_header(user: &str, password: &str) -> String {
    let mut nonce = [0u8; 16];
    if getrandom::fill(&mut nonce).is_err() {
        // Only the freshness of the token suffers; the digest still proves the password.
        nonce = (now_ms() as u128).to_le_bytes();
    }
    let created = format_rfc3339_ms(now_ms());
    let digest = password_digest(&nonce, &created, password);
    let nonce = base64::engine::general_purpose::STANDARD.encode(nonce);
    format!(
        r#"<wsse:Security s:mustUnderstand="1" xmlns:wsse="{NS_WSSE}" xmlns:wsu="{NS_WSU}"><wsse:UsernameToken><wsse:Username>{}</wsse:Username><wsse:Password Type="{PASSWORD_DIGEST}">{digest}</wsse:Password><wsse:Nonce EncodingType="{NONCE_TYPE}">{nonce}</wsse:Nonce><wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security>"#,
        escape(user)
    )
}

/// A SOAP 1.2 envelope with WS-Addressing action/to, a UsernameToken, and `body`.
fn envelope(action: &str, to: &str, user: &str, password: &str, body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="{NS_SOAP}" xmlns:wsa="{NS_WSA}" xmlns:tev="{NS_TEV}" xmlns:wsnt="{NS_WSNT}" xmlns:tds="{NS_TDS}"><s:Header>{}<wsa:Action>{action}</wsa:Action><wsa:To>{}</wsa:To></s:Header><s:Body>{body}</s:Body></s:Envelope>"#,
        security_header(user, password),
        escape(to)
    )
}

/// One SOAP call: POST, parse, faults and error statuses become errors.
async fn call(
    url: &str,
    action: &str,
    user: &str,
    password: &str,
    body: &str,
    timeout: Duration,
) -> Result<Element, OnvifError> {
    let doc = envelope(action, url, user, password, body);
    let ct = format!("application/soap+xml; charset=utf-8; action=\"{action}\"");
    let resp =
        client::send(Method::POST, url, &[("content-type", ct)], doc.into_bytes(), timeout, MAX_SOAP_BYTES).await?;
    let root = match xml::parse(&resp.body) {
        Ok(r) => r,
        Err(e) if !(200..300).contains(&resp.status) => {
            let _ = e;
            return Err(OnvifError::Status(resp.status));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(fault) = root.child("Body").and_then(|b| b.child("Fault")) {
        let reason = fault.find("Text").map(|t| t.text.clone()).unwrap_or_default();
        let code = fault.find("Subcode").and_then(|s| s.child("Value")).map(|v| v.text.clone()).unwrap_or_default();
        return Err(OnvifError::Fault(format!("{code} {reason}").trim().chars().take(300).collect()));
    }
    if !(200..300).contains(&resp.status) {
        return Err(OnvifError::Status(resp.status));
    }
    root.child("Body").ok_or(OnvifError::Missing("Body"))?;
    Ok(root)
}

/// A live subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The PullPoint address (where PullMessages, Renew and Unsubscribe go).
    pub address: String,
}

/// A notification message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The topic, as sent.
    pub topic: String,
    /// The message's `UtcTime`.
    pub utc_time: Option<String>,
    /// `PropertyOperation` (`Initialized`, `Changed`, `Deleted`).
    pub operation: Option<String>,
    /// `SimpleItem`s of `Source`, `Key` and `Data`, as (name, value).
    pub items: Vec<(String, String)>,
}

/// The notifications of a PullMessages answer.
pub fn notifications(root: &Element) -> Vec<Notification> {
    let mut msgs = Vec::new();
    root.find_all("NotificationMessage", &mut msgs);
    msgs.into_iter()
        .map(|n| {
            let topic = n.child("Topic").map(|t| t.text.clone()).unwrap_or_default();
            let inner = n.child("Message").and_then(|m| m.child("Message").or(Some(m)));
            let mut items = Vec::new();
            if let Some(m) = inner {
                let mut simple = Vec::new();
                m.find_all("SimpleItem", &mut simple);
                for s in simple.into_iter().take(64) {
                    if let (Some(k), Some(v)) = (s.attr("Name"), s.attr("Value")) {
                        items.push((k.to_owned(), v.to_owned()));
                    }
                }
            }
            Notification {
                topic,
                utc_time: inner.and_then(|m| m.attr("UtcTime")).map(str::to_owned),
                operation: inner.and_then(|m| m.attr("PropertyOperation")).map(str::to_owned),
                items,
            }
        })
        .collect()
}

/// A topic without namespace prefixes (`tns1:RuleEngine/tnsx:Gas` -> `RuleEngine/Gas`).
pub fn normalize_topic(topic: &str) -> String {
    topic.trim().split('/').map(|seg| seg.rsplit_once(':').map_or(seg, |(_, l)| l)).collect::<Vec<_>>().join("/")
}

/// Creates a PullPoint subscription.
pub async fn create(o: &OnvifCamera, timeout: Duration) -> Result<Subscription, OnvifError> {
    let body = format!(
        "<tev:CreatePullPointSubscription><tev:InitialTerminationTime>PT{}S</tev:InitialTerminationTime></tev:CreatePullPointSubscription>",
        o.subscription_s
    );
    let root = call(&o.events_url, ACTION_CREATE, &o.user, &o.password, &body, timeout).await?;
    let address = root
        .find("SubscriptionReference")
        .and_then(|r| r.child("Address"))
        .map(|a| a.text.clone())
        .filter(|a| !a.is_empty())
        .ok_or(OnvifError::Missing("SubscriptionReference/Address"))?;
    client::Url::parse(&address)?;
    Ok(Subscription { address })
}

/// Pulls messages, waiting up to the camera's pull timeout for some.
pub async fn pull(o: &OnvifCamera, sub: &Subscription) -> Result<Vec<Notification>, OnvifError> {
    let body = format!(
        "<tev:PullMessages><tev:Timeout>PT{}S</tev:Timeout><tev:MessageLimit>{MESSAGE_LIMIT}</tev:MessageLimit></tev:PullMessages>",
        o.pull_timeout_s
    );
    let timeout = Duration::from_secs(o.pull_timeout_s + 5);
    let root = call(&sub.address, ACTION_PULL, &o.user, &o.password, &body, timeout).await?;
    root.find("PullMessagesResponse").ok_or(OnvifError::Missing("PullMessagesResponse"))?;
    Ok(notifications(&root))
}

/// Renews the subscription for another lifetime.
pub async fn renew(o: &OnvifCamera, sub: &Subscription, timeout: Duration) -> Result<(), OnvifError> {
    let body = format!("<wsnt:Renew><wsnt:TerminationTime>PT{}S</wsnt:TerminationTime></wsnt:Renew>", o.subscription_s);
    let root = call(&sub.address, ACTION_RENEW, &o.user, &o.password, &body, timeout).await?;
    root.find("RenewResponse").map(|_| ()).ok_or(OnvifError::Missing("RenewResponse"))
}

/// Cancels the subscription.
pub async fn unsubscribe(o: &OnvifCamera, sub: &Subscription, timeout: Duration) -> Result<(), OnvifError> {
    call(&sub.address, ACTION_UNSUBSCRIBE, &o.user, &o.password, "<wsnt:Unsubscribe/>", timeout).await.map(|_| ())
}

/// Asks the device service for its time (the ONVIF liveness check); returns the camera's UTC ms.
pub async fn system_time(url: &str, user: &str, password: &str, timeout: Duration) -> Result<Option<i64>, OnvifError> {
    let root = call(url, ACTION_TIME, user, password, "<tds:GetSystemDateAndTime/>", timeout).await?;
    let resp = root.find("GetSystemDateAndTimeResponse").ok_or(OnvifError::Missing("GetSystemDateAndTimeResponse"))?;
    let utc = resp.find("UTCDateTime");
    let num = |parent: Option<&Element>, name: &str| -> Option<i64> { parent?.find(name)?.text.parse().ok() };
    let date = utc.and_then(|u| u.child("Date"));
    let time = utc.and_then(|u| u.child("Time"));
    let text = match (num(date, "Year"), num(date, "Month"), num(date, "Day")) {
        (Some(y), Some(mo), Some(d)) => format!(
            "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
            num(time, "Hour").unwrap_or(0),
            num(time, "Minute").unwrap_or(0),
            num(time, "Second").unwrap_or(0)
        ),
        _ => return Ok(None),
    };
    Ok(parse_rfc3339_ms(&text))
}

/// Waits `d` or until shutdown; true when shutting down.
async fn sleep_or_stop(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        r = shutdown.changed() => r.is_err() || *shutdown.borrow(),
    }
}

/// Keeps a PullPoint subscription on `camera` until shutdown, delivering gas detections.
pub async fn run(hub: Arc<Hub>, camera: Camera, mut shutdown: watch::Receiver<bool>) {
    let Some(o) = camera.config.onvif.clone() else { return };
    let Some(map) = camera.model.onvif.clone() else { return };
    let topics: Vec<String> = map.topics.iter().map(|t| normalize_topic(t)).collect();
    let m = hub.metrics.clone();
    let call_timeout = Duration::from_secs(10);
    let backoff_max = Duration::from_secs(o.backoff_max_s.max(1));
    let mut backoff = Duration::from_secs(1).min(backoff_max);
    let mut had_one = false;
    let name = camera.config.name.clone();
    // Set when the shutdown sender is gone: as good as a shutdown request.
    let mut orphaned = false;
    loop {
        if orphaned || *shutdown.borrow() {
            return;
        }
        let sub = tokio::select! {
            r = create(&o, call_timeout) => r,
            r = shutdown.changed() => {
                orphaned |= r.is_err();
                continue;
            }
        };
        let sub = match sub {
            Ok(s) => s,
            Err(e) => {
                m.onvif_errors.inc();
                tracing::warn!(camera = %name, error = %e, retry_s = backoff.as_secs_f64(), "onvif: subscribe failed");
                if sleep_or_stop(backoff, &mut shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(backoff_max);
                continue;
            }
        };
        m.onvif_subscribes.inc();
        if had_one {
            m.onvif_resubscribes.inc();
        }
        had_one = true;
        backoff = Duration::from_secs(1).min(backoff_max);
        tracing::info!(camera = %name, address = %sub.address, "onvif: subscribed");
        let half = Duration::from_secs(o.subscription_s / 2);
        let mut renew_at = Instant::now() + half;
        loop {
            if Instant::now() >= renew_at {
                let renewed = tokio::select! {
                    r = renew(&o, &sub, call_timeout) => Some(r),
                    r = shutdown.changed() => {
                        orphaned |= r.is_err();
                        None
                    }
                };
                match renewed {
                    Some(Ok(())) => {
                        m.onvif_renewals.inc();
                        renew_at = Instant::now() + half;
                    }
                    Some(Err(e)) => {
                        m.onvif_errors.inc();
                        tracing::warn!(camera = %name, error = %e, "onvif: renew failed; subscribing again");
                        break;
                    }
                    None => {}
                }
            }
            if orphaned || *shutdown.borrow() {
                if let Err(e) = unsubscribe(&o, &sub, Duration::from_secs(3)).await {
                    tracing::warn!(camera = %name, error = %e, "onvif: unsubscribe on shutdown failed");
                }
                return;
            }
            let pulled = tokio::select! {
                r = pull(&o, &sub) => r,
                r = shutdown.changed() => {
                    orphaned |= r.is_err();
                    continue;
                }
            };
            match pulled {
                Ok(list) => {
                    for n in list {
                        m.onvif_messages.inc();
                        if !topics.contains(&normalize_topic(&n.topic)) {
                            m.onvif_ignored.inc();
                            continue;
                        }
                        let mut items = n.items.clone();
                        if let Some(t) = &n.utc_time {
                            items.push(("@UtcTime".to_owned(), t.clone()));
                        }
                        let mapped = match map.fields.map(&Items(&items), &name) {
                            Ok(x) => x,
                            Err(e) => {
                                m.onvif_ignored.inc();
                                tracing::warn!(camera = %name, topic = %n.topic, error = %e, "onvif: message does not map to a detection");
                                continue;
                            }
                        };
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        (&n.topic, &n.utc_time, &n.items).hash(&mut h);
                        if hub.seen_before(&name, h.finish()) {
                            m.duplicates.inc();
                            continue;
                        }
                        let ts = mapped.ts_ms.or_else(|| n.utc_time.as_deref().and_then(parse_rfc3339_ms));
                        if hub.deliver(&camera, ts, mapped.detection, mapped.snapshot_url).await.is_err() {
                            // The agent is stopping or the spool queue is stuck; the subscription
                            // ends here and the camera's current state arrives again on re-subscribe.
                            tracing::error!(camera = %name, "onvif: detection could not be queued");
                        }
                    }
                }
                Err(e) => {
                    m.onvif_errors.inc();
                    tracing::warn!(camera = %name, error = %e, "onvif: pull failed; subscription dropped");
                    break;
                }
            }
        }
        // Best effort: a camera that is still up should not keep serving a subscription nobody pulls.
        let _ = unsubscribe(&o, &sub, Duration::from_secs(2)).await;
        if sleep_or_stop(backoff, &mut shutdown).await {
            return;
        }
        backoff = (backoff * 2).min(backoff_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_digest_matches_the_onvif_core_example() {
        // ONVIF Core Specification, UsernameToken example: nonce "LKqI6G/AikKCQrN0zqZFlg==",
        // created "2010-09-16T07:50:45Z", password "userpassword" -> "tuOSpGlFlIXsozq4HFNeeGeFLEI=".
        let nonce = base64::engine::general_purpose::STANDARD.decode("LKqI6G/AikKCQrN0zqZFlg==").unwrap();
        assert_eq!(password_digest(&nonce, "2010-09-16T07:50:45Z", "userpassword"), "tuOSpGlFlIXsozq4HFNeeGeFLEI=");
    }

    #[test]
    fn our_envelope_carries_a_token_that_verifies() {
        let doc = envelope(ACTION_PULL, "http://cam/sub/1", "admin", "s3cret<&>", "<tev:PullMessages/>");
        let root = xml::parse(doc.as_bytes()).unwrap();
        let token = UsernameToken::read(&root).unwrap();
        assert!(token.verifies("admin", "s3cret<&>"));
        assert!(!token.verifies("admin", "wrong"));
        assert_eq!(root.find("To").unwrap().text, "http://cam/sub/1");
    }

    #[test]
    fn reads_notifications_and_normalizes_topics() {
        let doc = r#"<s:Envelope xmlns:s="x"><s:Body><tev:PullMessagesResponse>
<wsnt:NotificationMessage><wsnt:Topic Dialect="d">tns1:RuleEngine/tnsvendor:GasLeak</wsnt:Topic>
<wsnt:Message><tt:Message UtcTime="2026-11-23T19:08:02Z" PropertyOperation="Changed">
<tt:Source><tt:SimpleItem Name="Rule" Value="zone1"/></tt:Source>
<tt:Data><tt:SimpleItem Name="State" Value="true"/><tt:SimpleItem Name="Gas" Value="methane"/></tt:Data>
</tt:Message></wsnt:Message></wsnt:NotificationMessage></tev:PullMessagesResponse></s:Body></s:Envelope>"#;
        let n = notifications(&xml::parse(doc.as_bytes()).unwrap());
        assert_eq!(n.len(), 1);
        assert_eq!(normalize_topic(&n[0].topic), "RuleEngine/GasLeak");
        assert_eq!(n[0].operation.as_deref(), Some("Changed"));
        assert_eq!(n[0].items[1], ("State".to_owned(), "true".to_owned()));
    }
}
