//! Enterprise scoping: which enterprise a gateway (and so each of its points) belongs to, from the
//! registry, cached for a moment. A confined caller asking for anything outside its enterprises
//! gets the same 404 as for something that does not exist: no leak of what others have.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use vigil_common::{EnterpriseId, GatewayId};

use super::{ApiError, ApiState, Principal};
use crate::store::Registry;

/// How long the gateway -> enterprise map is used before it is read again (registry changes through
/// the CLI show within this time).
const REFRESH: Duration = Duration::from_secs(2);

type Map = Arc<HashMap<String, String>>;

/// The gateway -> enterprise map.
#[derive(Clone)]
pub struct Scope {
    registry: Registry,
    cache: Arc<Mutex<Option<(Instant, Map)>>>,
}

impl Scope {
    /// A scope reading `registry`.
    pub fn new(registry: Registry) -> Scope {
        Scope { registry, cache: Arc::default() }
    }

    /// The current map (gateway id -> enterprise id).
    pub async fn map(&self) -> Result<Map, ApiError> {
        let mut cache = self.cache.lock().await;
        if let Some((at, map)) = cache.as_ref()
            && at.elapsed() < REFRESH
        {
            return Ok(map.clone());
        }
        let list = self.registry.list().await.map_err(|e| ApiError::internal(e.to_string()))?;
        let map: Map = Arc::new(list.into_iter().map(|g| (g.id, g.enterprise)).collect());
        *cache = Some((Instant::now(), map.clone()));
        Ok(map)
    }

    /// The enterprise of `gateway`, if registered.
    pub async fn enterprise_of(&self, gateway: &str) -> Result<Option<String>, ApiError> {
        Ok(self.map().await?.get(gateway).cloned())
    }

    /// Ok if `p` may see data of `gateway`; 404 naming `what` otherwise. A park-wide caller sees
    /// every gateway, registered or not; a confined one only registered gateways of its enterprises.
    pub async fn check_gateway(&self, p: &Principal, gateway: &str, what: &str) -> Result<(), ApiError> {
        if p.enterprises.is_none() {
            return Ok(());
        }
        match self.enterprise_of(gateway).await? {
            Some(e) if p.sees_name(&e) => Ok(()),
            _ => Err(ApiError::not_found(format!("{what} not found"))),
        }
    }
}

/// The registered gateway named `id` in a path, if the caller sees it (else 404, also for other
/// enterprises'), read from the registry itself rather than the cached map: for actions on it.
pub async fn visible_gateway(st: &ApiState, p: &Principal, id: &str) -> Result<(GatewayId, EnterpriseId), ApiError> {
    let missing = || ApiError::not_found(format!("gateway {id} not found"));
    let gateway = GatewayId::new(id).map_err(|_| missing())?;
    let enterprise = st.registry.enterprise_of(&gateway).await.map_err(|e| ApiError::internal(e.to_string()))?;
    match enterprise {
        Some(e) if p.sees_name(&e) => {
            Ok((gateway, EnterpriseId::new(e).map_err(|e| ApiError::internal(e.to_string()))?))
        }
        _ => Err(missing()),
    }
}
