//! A driver session as the store URL says: its contact points, login and TLS.

use std::sync::Arc;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use scylla::client::session::{OpenSsl010Config, Session};
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use switchboard_ingest::url::Tls;

use super::config::CqlConfig;
use super::error::failed;
use crate::store::StoreError;

/// How long opening a connection to a node may take before the node counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the cluster `config` names. A cluster that cannot be reached is
/// [`StoreError::Unavailable`]; one that refuses the login, or a CA file that cannot be read, is
/// [`StoreError::Storage`].
pub async fn open(config: &CqlConfig) -> Result<Session, StoreError> {
    let mut builder = SessionBuilder::new()
        .known_nodes(&config.nodes)
        .connection_timeout(CONNECT_TIMEOUT)
        // Only this keyspace's metadata is needed (for routing), not every keyspace's.
        .keyspaces_to_fetch([config.keyspace.clone()])
        // A row rewritten by a later batch must win over an earlier write of it, whichever
        // node coordinates each; server-side timestamps from two nodes' clocks may not.
        .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()));
    if let Some(credentials) = &config.credentials {
        builder = builder.user(&credentials.user, &credentials.password);
    }
    if let Some(tls) = &config.tls {
        builder = builder.tls_context(Some(tls_config(tls)?));
    }
    builder
        .build()
        .await
        .map_err(|e| failed(format_args!("connecting to {}", config.nodes.join(",")), e))
}

/// TLS that checks the nodes' certificates (against the address connected to: the driver sets
/// that) with the CA certificates of `tls.ca`, or with the system's trust store without one.
fn tls_config(tls: &Tls) -> Result<OpenSsl010Config, StoreError> {
    let setup = |e: openssl::error::ErrorStack| StoreError::Storage(format!("setting up TLS: {e}"));
    // Verifies the peer, against the system's trust store, unless told otherwise below.
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(setup)?;
    if let Some(path) = &tls.ca {
        let unreadable = |why: String| {
            StoreError::Storage(format!(
                "cannot read the CA certificates in {}: {why}",
                path.display()
            ))
        };
        let pem = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
        let certificates = X509::stack_from_pem(&pem).map_err(|e| unreadable(e.to_string()))?;
        if certificates.is_empty() {
            return Err(unreadable("it holds no PEM certificate".to_owned()));
        }
        // Only these CAs: a node's certificate signed by some public CA is not one of ours.
        let mut store = X509StoreBuilder::new().map_err(setup)?;
        for certificate in certificates {
            store.add_cert(certificate).map_err(setup)?;
        }
        builder.set_cert_store(store.build());
    }
    Ok(OpenSsl010Config::new(builder))
}
