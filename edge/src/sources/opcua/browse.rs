//! Address-space browsing for technicians (`vigil-edge opcua browse`): the tree under a node, with
//! node ids ready to paste into the configuration and the current value of each variable.

use opcua::types::{
    BrowseDescription, BrowseDirection, BrowseResultMask, ByteString, NodeClass, NodeId, ReferenceTypeId,
};

use super::config::OpcuaDevice;
use super::nodeid::NodeRef;
use super::{OpcuaError, client_for, connect, discover, endpoint_label, read_values};

/// Most nodes one browse lists (a guard against huge address spaces).
pub const MAX_NODES: usize = 20_000;

/// One node of the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Depth below the start node (1 = its children).
    pub depth: u32,
    /// Node id (`ns=2;s=Tank101.Level`).
    pub node: String,
    /// Browse name (`2:Level`).
    pub browse_name: String,
    /// Display name.
    pub display_name: String,
    /// Node class (`Object`, `Variable`, ...).
    pub class: String,
    /// For variables: value and status.
    pub value: Option<String>,
}

/// What a browse found.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The endpoints the server offers.
    pub endpoints: Vec<String>,
    /// The server's namespace array (index: URI), for `nsu=` node ids.
    pub namespaces: Vec<(u16, String)>,
    /// The nodes, depth first.
    pub lines: Vec<Line>,
    /// Whether [`MAX_NODES`] cut the listing short.
    pub truncated: bool,
}

/// Connects with `d`'s settings and lists the tree under `start` down to `depth` levels.
pub async fn browse(d: &OpcuaDevice, start: &NodeRef, depth: u32) -> Result<Report, OpcuaError> {
    let mut client = client_for(d)?;
    let endpoints = discover(&client, &d.endpoint, d.timeout).await?.iter().map(endpoint_label).collect();
    let conn = connect(&mut client, d).await?;
    let session = conn.session.clone();
    let result = async {
        let ns = tokio::time::timeout(d.timeout, session.read_namespace_array())
            .await
            .map_err(|_| OpcuaError::Timeout("reading the namespace array", d.timeout.as_millis()))?
            .map_err(|e| OpcuaError::Service(format!("reading the namespace array: {e}")))?;
        let mut namespaces: Vec<(u16, String)> = ns.known_namespaces().iter().map(|(u, i)| (*i, u.clone())).collect();
        namespaces.sort();
        let root = start.bind(&ns).map_err(|e| OpcuaError::Service(e.to_string()))?;
        let mut lines: Vec<Line> = Vec::new();
        let mut truncated = false;
        // Pre-order walk with an explicit stack of nodes still to list, so the output reads as a
        // tree and deep address spaces cannot overflow anything.
        let mut stack: Vec<(opcua::types::ReferenceDescription, u32)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut variables: Vec<NodeId> = Vec::new();
        if depth > 0 {
            for c in children(&session, &root, d.timeout).await?.into_iter().rev() {
                stack.push((c, 1));
            }
        }
        while let Some((c, level)) = stack.pop() {
            if lines.len() >= MAX_NODES {
                truncated = true;
                break;
            }
            let id = c.node_id.node_id.clone();
            if c.node_class == NodeClass::Variable {
                variables.push(id.clone());
            }
            lines.push(Line {
                depth: level,
                node: id.to_string(),
                browse_name: format!("{}:{}", c.browse_name.namespace_index, c.browse_name.name),
                display_name: c.display_name.text.to_string(),
                class: format!("{:?}", c.node_class),
                value: None,
            });
            if level < depth && seen.insert(id.clone()) {
                for k in children(&session, &id, d.timeout).await?.into_iter().rev() {
                    stack.push((k, level + 1));
                }
            }
        }
        variables.sort_by_key(|n| n.to_string());
        variables.dedup();
        let nodes = variables;
        if !nodes.is_empty() {
            let values = read_values(&session, &nodes, d.timeout).await?;
            for (n, dv) in nodes.iter().zip(values) {
                let text = match (&dv.value, dv.status) {
                    (Some(v), Some(s)) if !s.is_good() => format!("{v} ({s})"),
                    (Some(v), _) => format!("{v}"),
                    (None, s) => format!("({})", s.unwrap_or_default()),
                };
                // Structures print at length; a technician needs a glance, not the whole dump.
                let text =
                    if text.chars().count() > 80 { text.chars().take(77).collect::<String>() + "..." } else { text };
                let key = n.to_string();
                for l in lines.iter_mut().filter(|l| l.node == key && l.value.is_none()) {
                    l.value = Some(text.clone());
                }
            }
        }
        Ok(Report { endpoints, namespaces, lines, truncated })
    }
    .await;
    conn.close(d.timeout).await;
    result
}

async fn children(
    session: &opcua::client::Session,
    node: &NodeId,
    timeout: std::time::Duration,
) -> Result<Vec<opcua::types::ReferenceDescription>, OpcuaError> {
    let desc = BrowseDescription {
        node_id: node.clone(),
        browse_direction: BrowseDirection::Forward,
        reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
        include_subtypes: true,
        node_class_mask: 0,
        result_mask: BrowseResultMask::All as u32,
    };
    let t = |what: &'static str| OpcuaError::Timeout(what, timeout.as_millis());
    let mut results = tokio::time::timeout(timeout, session.browse(&[desc], 1000, None))
        .await
        .map_err(|_| t("browse"))?
        .map_err(|e| OpcuaError::Service(format!("browse {node}: {e}")))?;
    let mut out = Vec::new();
    // Continuation rounds are bounded; a server that never finishes is cut off.
    for _ in 0..100 {
        let Some(r) = results.pop() else {
            break;
        };
        if !r.status_code.is_good() {
            return Err(OpcuaError::Service(format!("browse {node}: {}", r.status_code)));
        }
        out.extend(r.references.unwrap_or_default());
        let cp: ByteString = r.continuation_point;
        if cp.is_null() || cp.is_empty() {
            break;
        }
        results = tokio::time::timeout(timeout, session.browse_next(false, &[cp]))
            .await
            .map_err(|_| t("browse next"))?
            .map_err(|e| OpcuaError::Service(format!("browse next {node}: {e}")))?;
    }
    Ok(out)
}
