//! Where the CQL read models live, and how to log in, from a store URL:
//!
//! ```text
//! scylla://[user:password@]host[:port][,host[:port]…]/keyspace[?replication=N][&dc=NAME[,NAME…]]
//!     [&tls=true][&ca=FILE]
//! ```
//!
//! `cassandra://` means the same. The hosts are contact points only: the driver learns the rest
//! of the cluster from them. The port defaults to 9042, IPv6 addresses go in brackets. The query
//! says how to replicate the keyspace if start-up has to create it: `replication` is the number
//! of replicas (default 1), `SimpleStrategy` unless `dc` names datacenters, in which case it is
//! `NetworkTopologyStrategy` with that many replicas in each. A keyspace that already exists keeps
//! its own replication; changing it is an operator's `ALTER KEYSPACE`, not something a start-up
//! should do behind their back.
//!
//! Credentials log in with the password authenticator (`PasswordAuthenticator` in Cassandra and
//! ScyllaDB); user and password are percent-decoded (`%40` for `@`, `%3A` for `:`, `%2F` for
//! `/`). `tls=true` speaks TLS, checking the nodes' certificates against the system's trust
//! store; `ca=FILE` (a PEM file, percent-decoded path) checks them against the CA certificates in
//! it instead, and turns TLS on by itself. The driver checks a certificate against the IP address
//! it connects to (nodes are found by address), so each node's certificate must name its address.
//! Error messages never repeat the password.

use std::fmt::Write as _;

use switchboard_ingest::url::{Credentials, Tls, TlsParameters, redacted, split_credentials};

/// The CQL native protocol's port.
pub const DEFAULT_PORT: u16 = 9042;

/// A parsed store URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CqlConfig {
    /// Contact points, each `host:port`.
    pub nodes: Vec<String>,
    /// The keyspace every table lives in, lower-cased (as CQL reads an unquoted name).
    pub keyspace: String,
    /// How to replicate the keyspace when it has to be created.
    pub replication: Replication,
    /// Who to log in as, when the URL has credentials.
    pub credentials: Option<Credentials>,
    /// Whether to speak TLS, and which CA to trust.
    pub tls: Option<Tls>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy`: this many replicas, placed without regard to datacenters.
    Simple { factor: u32 },
    /// `NetworkTopologyStrategy`: `factor` replicas in each of these datacenters.
    PerDatacenter { datacenters: Vec<String>, factor: u32 },
}

/// A store URL that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid CQL store URL `{url}`: {reason} (expected \
     scylla://[user:password@]host:port[,host:port]/keyspace[?replication=N][&dc=NAME][&tls=true][&ca=FILE])"
)]
pub struct UrlError {
    /// The URL without its credentials.
    pub url: String,
    pub reason: String,
}

/// CQL caps keyspace names at 48 characters.
const MAX_KEYSPACE_LEN: usize = 48;

impl CqlConfig {
    pub fn from_url(url: &str) -> Result<CqlConfig, UrlError> {
        let fail = |reason: String| UrlError { url: redacted(url), reason };
        let rest = ["scylla://", "cassandra://"]
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme))
            .ok_or_else(|| fail("the scheme must be scylla:// or cassandra://".to_owned()))?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, keyspace) =
            location.split_once('/').ok_or_else(|| fail("the keyspace is missing".to_owned()))?;
        let (credentials, hosts) = split_credentials(authority).map_err(fail)?;
        let nodes = hosts.split(',').map(node).collect::<Result<Vec<_>, _>>().map_err(fail)?;
        let keyspace = keyspace_name(keyspace).map_err(fail)?;
        let (replication, tls) = parameters(query).map_err(fail)?;
        Ok(CqlConfig { nodes, keyspace, replication, credentials, tls })
    }
}

impl Replication {
    /// The map `CREATE KEYSPACE … WITH replication = …` takes. Datacenter names were checked
    /// to be plain words when parsed, so they need no quoting beyond the quotes around them.
    pub(super) fn to_cql(&self) -> String {
        match self {
            Replication::Simple { factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}")
            }
            Replication::PerDatacenter { datacenters, factor } => {
                let mut map = "{'class': 'NetworkTopologyStrategy'".to_owned();
                for datacenter in datacenters {
                    // Writing to a String cannot fail.
                    let _ = write!(map, ", '{datacenter}': {factor}");
                }
                map.push('}');
                map
            }
        }
    }
}

/// `host[:port]` or `[v6 address][:port]`, as `host:port`.
fn node(text: &str) -> Result<String, String> {
    let (host, port) = match text.strip_prefix('[') {
        Some(bracketed) => {
            let (address, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("`{text}` opens a bracket it does not close"))?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| {
                    format!("`{text}` has something other than a port after the address")
                })?),
            };
            (format!("[{address}]"), port)
        }
        None => match text.split_once(':') {
            Some((host, port)) if !port.contains(':') => (host.to_owned(), Some(port)),
            Some(_) => return Err(format!("`{text}`: an IPv6 address goes in brackets")),
            None => (text.to_owned(), None),
        },
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("a host is missing in `{text}`"));
    }
    let port = match port {
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| format!("`{port}` in `{text}` is not a port (1 to 65535)"))?,
        None => DEFAULT_PORT,
    };
    Ok(format!("{host}:{port}"))
}

fn keyspace_name(name: &str) -> Result<String, String> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !starts_with_letter
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        || name.len() > MAX_KEYSPACE_LEN
    {
        return Err(format!(
            "the keyspace `{name}` must be a letter followed by letters, digits or `_`, at most \
             {MAX_KEYSPACE_LEN} characters"
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// The query's replication and TLS settings.
fn parameters(query: &str) -> Result<(Replication, Option<Tls>), String> {
    let mut factor = 1;
    let mut datacenters = None;
    let mut tls = TlsParameters::default();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("replication", value)) => {
                factor = value.parse::<u32>().ok().filter(|&n| n > 0).ok_or_else(|| {
                    format!("replication=`{value}` is not a positive number of replicas")
                })?;
            }
            Some(("dc", value)) => {
                let names: Vec<String> = value.split(',').map(str::to_owned).collect();
                if let Some(bad) = names.iter().find(|name| !is_datacenter_name(name)) {
                    return Err(format!(
                        "dc=`{bad}` is not a datacenter name (letters, digits, `_`, `-`, `.`)"
                    ));
                }
                datacenters = Some(names);
            }
            Some((name, value)) if tls.take(name, value)? => {}
            _ => {
                return Err(format!(
                    "unknown parameter `{pair}`; known: replication, dc, {}",
                    TlsParameters::NAMES
                ));
            }
        }
    }
    let replication = match datacenters {
        Some(datacenters) => Replication::PerDatacenter { datacenters, factor },
        None => Replication::Simple { factor },
    };
    Ok((replication, tls.finish()?))
}

fn is_datacenter_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}
