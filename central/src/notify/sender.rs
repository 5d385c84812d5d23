//! Senders behind one trait: the webhook (a real HTTP POST of the message as JSON, http or https
//! with rustls/ring) and the logging SMS and e-mail senders (they write what they would send to the
//! log, labelled as such; nothing leaves central).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::Message;
use super::config::{ChannelDef, ChannelKind};

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The receiver answered with a non-2xx status.
    #[error("receiver answered HTTP {0}")]
    Status(u16),
    /// Connecting, TLS or HTTP failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The attempt took longer than the configured timeout.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// The channel could not be set up.
    #[error("channel setup: {0}")]
    Setup(String),
}

/// A future one attempt returns.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>>;

/// A way of sending a notification (one attempt; retries are the caller's).
pub trait Sender: Send + Sync {
    /// What kind of sender this is (for logs and the delivery log).
    fn kind(&self) -> &'static str;
    /// Makes one attempt to deliver `msg`.
    fn send<'a>(&'a self, msg: &'a Message) -> SendFuture<'a>;
}

/// The logging SMS or e-mail sender of the demo: it logs what it would send.
pub struct LogSender {
    kind: &'static str,
    channel: String,
    to: Vec<String>,
}

impl Sender for LogSender {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn send<'a>(&'a self, msg: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            tracing::warn!(
                channel = %self.channel, sender = self.kind, to = ?self.to, rule = %msg.rule, alarm = msg.alarm.id,
                "LOGGING SENDER (demo, nothing is sent): {}", msg.text
            );
            Ok(())
        })
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// POSTs the message as JSON to a URL.
pub struct WebhookSender {
    client: HttpsClient,
    uri: hyper::Uri,
}

fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, SendError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| SendError::Setup(format!("{}: {e}", path.display())))?;
            for c in certs {
                let c = c.map_err(|e| SendError::Setup(format!("{}: {e}", path.display())))?;
                roots.add(c).map_err(|e| SendError::Setup(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // A system certificate rustls cannot parse is skipped, as browsers do.
                let _ = roots.add(c);
            }
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| SendError::Setup(e.to_string()))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

impl WebhookSender {
    /// A sender to `url`, trusting `ca_file` (PEM) for https, or the system roots.
    pub fn new(url: &str, ca_file: Option<&std::path::Path>) -> Result<WebhookSender, SendError> {
        let uri: hyper::Uri = url.parse().map_err(|e| SendError::Setup(format!("url {url:?}: {e}")))?;
        let tls = tls_config(ca_file)?;
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(connector);
        Ok(WebhookSender { client, uri })
    }
}

impl Sender for WebhookSender {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(&'a self, msg: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            let body = serde_json::to_vec(msg).map_err(|e| SendError::Transport(e.to_string()))?;
            let req = hyper::Request::post(self.uri.clone())
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(hyper::header::USER_AGENT, concat!("vigil-central/", env!("CARGO_PKG_VERSION")))
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| SendError::Transport(e.to_string()))?;
            let resp = self.client.request(req).await.map_err(|e| {
                let mut s = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(inner) = src {
                    s.push_str(": ");
                    s.push_str(&inner.to_string());
                    src = inner.source();
                }
                SendError::Transport(s)
            })?;
            let status = resp.status();
            // Read (and drop) the answer so the connection can be reused.
            let _ = resp.into_body().collect().await;
            if status.is_success() { Ok(()) } else { Err(SendError::Status(status.as_u16())) }
        })
    }
}

/// Builds the sender of a configured channel.
pub fn build(def: &ChannelDef) -> Result<Arc<dyn Sender>, SendError> {
    Ok(match def.kind {
        ChannelKind::Webhook => {
            let url = def.url.as_deref().ok_or_else(|| SendError::Setup("a webhook needs a url".into()))?;
            Arc::new(WebhookSender::new(url, def.ca_file.as_deref())?)
        }
        ChannelKind::SmsLog => Arc::new(LogSender { kind: "sms-log", channel: def.name.clone(), to: def.to.clone() }),
        ChannelKind::EmailLog => {
            Arc::new(LogSender { kind: "email-log", channel: def.name.clone(), to: def.to.clone() })
        }
    })
}
