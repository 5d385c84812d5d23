//! Point metadata: each gateway's catalogue of devices and points (units, valid ranges, poll
//! intervals, addresses), as the gateway signed it on `up/catalogue` or as an administrator
//! imported it before the gateway first connected. Kept in `meta.db` beside the registry and in
//! memory for the API; the gateway's own catalogue always replaces an import, because it describes
//! the configuration the gateway actually runs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use sqlx::Row as _;
use vigil_common::PointCatalogue;

use crate::store::{Registry, StoreError};

/// Tables this module keeps in `meta.db`.
pub const SCHEMA: &[&str] = &["CREATE TABLE IF NOT EXISTS point_catalogues (
        gateway TEXT PRIMARY KEY,
        source TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        imported_by TEXT,
        envelope BLOB,
        body BLOB NOT NULL
    )"];

/// Where a stored catalogue came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Signed by the gateway from the configuration it runs.
    Gateway,
    /// Imported through the API (from `vigil-edge catalogue`) before the gateway reported its own.
    Import,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Gateway => "gateway",
            Source::Import => "import",
        }
    }
}

/// One gateway's catalogue as central keeps it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The catalogue.
    pub catalogue: PointCatalogue,
    /// Where it came from.
    pub source: Source,
    /// When central stored it, UTC ms.
    pub received_ms: i64,
    /// Who imported it (imports only).
    pub imported_by: Option<String>,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// Stored (first import, or replacing an earlier import).
    Stored,
    /// Refused: the gateway's own signed catalogue is already there and stays.
    GatewayReported,
}

/// Catalogue counters for `/metrics`.
#[derive(Debug, Default)]
pub struct CatalogueMetrics {
    /// Signed catalogues accepted from gateways.
    pub received: AtomicU64,
    /// Of those, ones that changed what was stored.
    pub changed: AtomicU64,
    /// Catalogues refused (signature, gateway, shape).
    pub rejected: AtomicU64,
    /// Imports stored through the API.
    pub imported: AtomicU64,
    /// Store failures.
    pub store_errors: AtomicU64,
}

impl CatalogueMetrics {
    /// Prometheus text.
    pub fn prometheus(&self) -> String {
        let mut s = String::new();
        for (name, v) in [
            ("vigil_catalogues_received_total", &self.received),
            ("vigil_catalogues_changed_total", &self.changed),
            ("vigil_catalogues_rejected_total", &self.rejected),
            ("vigil_catalogues_imported_total", &self.imported),
            ("vigil_catalogue_store_errors_total", &self.store_errors),
        ] {
            s.push_str(&format!("{name} {}\n", v.load(Ordering::Relaxed)));
        }
        s
    }
}

/// The catalogues of every gateway (cheap to clone; clones share the memory copy).
#[derive(Clone)]
pub struct Catalogues {
    registry: Registry,
    map: Arc<RwLock<HashMap<String, Arc<Stored>>>>,
    /// Counters.
    pub metrics: Arc<CatalogueMetrics>,
}

impl Catalogues {
    /// Loads every stored catalogue. A row that no longer decodes is skipped and logged, never fatal:
    /// the gateway sends its catalogue again on its next connect.
    pub async fn open(registry: &Registry) -> Result<Catalogues, StoreError> {
        let rows = sqlx::query("SELECT gateway, source, received_ms, imported_by, body FROM point_catalogues")
            .fetch_all(registry.pool())
            .await?;
        let mut map = HashMap::new();
        for row in rows {
            let gateway: String = row.try_get("gateway")?;
            let body: Vec<u8> = row.try_get("body")?;
            let catalogue = match postcard::from_bytes::<PointCatalogue>(&body) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(%gateway, error = %e, "a stored point catalogue does not decode; skipped");
                    continue;
                }
            };
            let source =
                if row.try_get::<String, _>("source")? == "gateway" { Source::Gateway } else { Source::Import };
            let stored = Stored {
                catalogue,
                source,
                received_ms: row.try_get("received_ms")?,
                imported_by: row.try_get("imported_by")?,
            };
            map.insert(gateway, Arc::new(stored));
        }
        Ok(Catalogues { registry: registry.clone(), map: Arc::new(RwLock::new(map)), metrics: Arc::default() })
    }

    /// Stores a catalogue the gateway signed (`envelope`, already verified), replacing whatever
    /// was there; returns false when it equals the stored one (nothing written).
    pub async fn record_signed(
        &self,
        catalogue: PointCatalogue,
        envelope: &[u8],
        received_ms: i64,
    ) -> Result<bool, StoreError> {
        self.metrics.received.fetch_add(1, Ordering::Relaxed);
        if self
            .get(catalogue.gateway.as_str())
            .is_some_and(|s| s.source == Source::Gateway && same_content(&s.catalogue, &catalogue))
        {
            return Ok(false);
        }
        let stored = Stored { catalogue, source: Source::Gateway, received_ms, imported_by: None };
        self.write(stored, Some(envelope)).await?;
        self.metrics.changed.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Stores an imported catalogue unless the gateway already reported its own.
    pub async fn import(&self, catalogue: PointCatalogue, by: &str, now_ms: i64) -> Result<Imported, StoreError> {
        if self.get(catalogue.gateway.as_str()).is_some_and(|s| s.source == Source::Gateway) {
            return Ok(Imported::GatewayReported);
        }
        let stored =
            Stored { catalogue, source: Source::Import, received_ms: now_ms, imported_by: Some(by.to_owned()) };
        self.write(stored, None).await?;
        self.metrics.imported.fetch_add(1, Ordering::Relaxed);
        Ok(Imported::Stored)
    }

    async fn write(&self, stored: Stored, envelope: Option<&[u8]>) -> Result<(), StoreError> {
        let body = postcard::to_allocvec(&stored.catalogue).map_err(|e| StoreError::Bad(e.to_string()))?;
        let gateway = stored.catalogue.gateway.to_string();
        let written = sqlx::query(
            "INSERT INTO point_catalogues (gateway, source, received_ms, imported_by, envelope, body)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (gateway) DO UPDATE SET source = excluded.source, received_ms = excluded.received_ms,
               imported_by = excluded.imported_by, envelope = excluded.envelope, body = excluded.body",
        )
        .bind(&gateway)
        .bind(stored.source.name())
        .bind(stored.received_ms)
        .bind(&stored.imported_by)
        .bind(envelope)
        .bind(body)
        .execute(self.registry.pool())
        .await;
        if let Err(e) = written {
            self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
            return Err(e.into());
        }
        self.map.write().unwrap_or_else(|p| p.into_inner()).insert(gateway, Arc::new(stored));
        Ok(())
    }

    /// The catalogue of `gateway`, if central has one.
    pub fn get(&self, gateway: &str) -> Option<Arc<Stored>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).get(gateway).cloned()
    }

    /// Every stored catalogue.
    pub fn all(&self) -> Vec<Arc<Stored>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}

/// Equal apart from when the gateway made it (it makes a fresh one at every start).
fn same_content(a: &PointCatalogue, b: &PointCatalogue) -> bool {
    a.config_sha256 == b.config_sha256 && a.devices == b.devices && a.points == b.points
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_common::catalogue::{DeviceEntry, DeviceProtocol, PointEntry};
    use vigil_common::{GatewayId, PointId};

    fn catalogue(gateway: &str, unit: &str) -> PointCatalogue {
        PointCatalogue {
            gateway: GatewayId::new(gateway).unwrap(),
            ts_ms: 1,
            config_sha256: [3; 32],
            devices: vec![DeviceEntry {
                name: "tanks".into(),
                protocol: DeviceProtocol::ModbusTcp,
                address: "h:502 unit 1".into(),
                profile: None,
            }],
            points: vec![PointEntry {
                id: PointId::new("TK1.LT").unwrap(),
                device: 0,
                unit: unit.into(),
                range: Some([0.0, 10.0]),
                poll_ms: 1000,
                deadband: 0.0,
                address: "holding 0 f32 ABCD".into(),
            }],
        }
    }

    #[tokio::test]
    async fn the_gateways_catalogue_replaces_an_import_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).await.unwrap();
        let c = Catalogues::open(&reg).await.unwrap();
        assert_eq!(c.import(catalogue("gw-1", "m"), "tech", 10).await.unwrap(), Imported::Stored);
        assert_eq!(c.import(catalogue("gw-1", "cm"), "tech", 11).await.unwrap(), Imported::Stored);
        assert_eq!(c.get("gw-1").unwrap().catalogue.points[0].unit, "cm");
        assert!(c.record_signed(catalogue("gw-1", "mm"), b"sealed", 20).await.unwrap());
        // The same content again (a reconnect) writes nothing.
        let mut again = catalogue("gw-1", "mm");
        again.ts_ms = 99;
        assert!(!c.record_signed(again, b"sealed", 30).await.unwrap());
        assert_eq!(c.import(catalogue("gw-1", "m"), "tech", 40).await.unwrap(), Imported::GatewayReported);
        drop(c);

        let c = Catalogues::open(&reg).await.unwrap();
        let s = c.get("gw-1").unwrap();
        assert_eq!((s.source, s.received_ms, s.catalogue.points[0].unit.as_str()), (Source::Gateway, 20, "mm"));
        assert!(c.get("gw-2").is_none());
    }
}
