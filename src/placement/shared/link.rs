//! The connection to the shared pin store: where its primary is (`url`, or wherever the
//! sentinels say, or the cluster's nodes), the TLS files, connecting and reconnecting, and
//! connecting again with TLS files a reload read anew. What is asked over it is the parent
//! module's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo, TlsMode};

use crate::config;
use crate::throttle::Throttle;
use crate::tls::{self, TlsError};

/// Why the store gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// No connection has been made yet.
    #[error("not connected to Redis")]
    NotConnected,
    /// Redis failed under a second ago: not asked again yet.
    #[error("Redis failed under a second ago")]
    Resting,
    /// The store took longer than the configured timeout.
    #[error("no answer from Redis within {0:?}")]
    Timeout(Duration),
    /// The store or the connection failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A certificate, key or CA file for TLS to Redis is not usable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Where the store's primary is.
pub(super) enum Primary {
    /// The server `url` names.
    Fixed(redis::Client),
    /// Wherever the sentinels say when asked (at each connection).
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// A Redis Cluster, learned from the node `url` names.
    Cluster(ClusterClient),
}

/// The TLS files of `[pins.redis]` read again by a reload, for
/// [`SharedPins::renew`](super::SharedPins::renew).
pub struct Renewed(pub(super) Primary);

/// A connection to the store: one server, or every node of a cluster. Both reconnect by
/// themselves; a cluster's also follows its failovers and slot moves.
#[derive(Clone)]
pub(super) enum Store {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Store {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Store::Server(server) => server.req_packed_command(cmd),
            Store::Cluster(cluster) => cluster.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Store::Server(server) => server.req_packed_commands(cmd, offset, count),
            Store::Cluster(cluster) => cluster.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Store::Server(server) => server.get_db(),
            Store::Cluster(cluster) => cluster.get_db(),
        }
    }
}

/// A connection to the store.
#[derive(Clone)]
pub(super) struct Connected {
    pub(super) store: Store,
    /// The server's address.
    pub(super) at: String,
    /// The [`Link::renewals`] it was made after.
    renewals: u64,
}

/// The connection of one replica to the store, and how to make it.
pub(super) struct Link {
    /// The clients to connect with; replaced when the TLS files are read again.
    primary: ArcSwap<Primary>,
    /// How often the TLS files were read again.
    renewals: AtomicU64,
    url: String,
    timeout: Duration,
    connection: Mutex<Option<Connected>>,
    /// Rechecks with the sentinels that got no answer, warned about at most every ten seconds.
    sentinels_silent: Throttle,
    /// Connections with renewed TLS files that failed, warned about likewise.
    renewal_refused: Throttle,
}

impl Link {
    /// A link for `config`, not connected yet; its files are read and checked here.
    pub(super) fn new(config: &config::SharedPins) -> Result<Link, SharedError> {
        Ok(Link {
            primary: ArcSwap::from_pointee(primary(config)?),
            renewals: AtomicU64::new(0),
            url: config.url.clone(),
            timeout: config.timeout,
            connection: Mutex::default(),
            sentinels_silent: Throttle::default(),
            renewal_refused: Throttle::default(),
        })
    }

    /// See [`SharedPins::connect`](super::SharedPins::connect).
    pub(super) async fn connect(&self, recheck: bool) -> Result<(), SharedError> {
        let held = self.current();
        let held_at = held.as_ref().map(|held| held.at.clone());
        let renewals = self.renewals.load(Ordering::Acquire);
        let renewing = held.is_some_and(|held| held.renewals != renewals);
        let primary = self.primary.load_full();
        let ask_sentinels = recheck && matches!(*primary, Primary::Sentinel(_));
        if held_at.is_some() && !ask_sentinels && !renewing {
            return Ok(());
        }
        let connected = self.open(&primary, held_at.as_deref(), renewing).await;
        let connected = match (connected, &held_at) {
            (Ok(connected), _) => connected,
            // Files the store refuses (not yet renewed on its side, say): keep what works.
            (Err(e), Some(at)) if renewing => {
                if self.renewal_refused.due().is_some() {
                    tracing::warn!(error = %e, server = at, "redis refused a connection made with the reloaded TLS files; keeping the one open");
                }
                return Ok(());
            }
            // Sentinels that do not answer say nothing of the primary, which may: keep it.
            (Err(e), Some(at)) => {
                if self.sentinels_silent.due().is_some() {
                    tracing::warn!(error = %e, primary = at, "the redis sentinels did not say where the primary is; keeping the one connected");
                }
                return Ok(());
            }
            (Err(e), None) => return Err(e),
        };
        let Some((store, at)) = connected else {
            return Ok(());
        };
        match &held_at {
            Some(old) if renewing && *old == at => {
                tracing::info!(
                    server = at,
                    "connected to redis with the reloaded TLS files"
                )
            }
            Some(old) => tracing::warn!(
                from = old,
                to = at,
                "the sentinels name another redis primary; pins are shared there now"
            ),
            None => {
                tracing::info!(url = %redacted(&self.url), primary = at, "sharing pins through redis")
            }
        }
        let mut slot = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(Connected {
            store,
            at,
            renewals,
        });
        Ok(())
    }

    /// A connection to the store's primary, or `None` when the one held (at `held_at`) is there
    /// already and needs no renewal.
    async fn open(
        &self,
        primary: &Primary,
        held_at: Option<&str>,
        renewing: bool,
    ) -> Result<Option<(Store, String)>, SharedError> {
        let patience = self.timeout.max(Duration::from_secs(1));
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(patience))
            .set_response_timeout(Some(patience))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let connecting = async {
            let client = match primary {
                Primary::Fixed(client) => client.clone(),
                Primary::Sentinel(sentinels) => sentinels.lock().await.async_get_client().await?,
                Primary::Cluster(cluster) => {
                    let connection = Store::Cluster(cluster.get_async_connection().await?);
                    return Ok(Some((connection, format!("cluster of {}", self.seed()))));
                }
            };
            let at = client.get_connection_info().addr().to_string();
            if held_at == Some(at.as_str()) && !renewing {
                return Ok(None);
            }
            let connection = ConnectionManager::new_with_config(client, config).await?;
            Ok::<_, SharedError>(Some((Store::Server(connection), at)))
        };
        match tokio::time::timeout(patience * 2, connecting).await {
            Ok(connected) => connected,
            Err(_) => Err(SharedError::Timeout(patience * 2)),
        }
    }

    /// The address of the node `url` names.
    fn seed(&self) -> String {
        let info = self.url.as_str().into_connection_info();
        info.map_or_else(|_| redacted(&self.url), |info| info.addr().to_string())
    }

    /// Connects with `renewed` from the next [`connect`](Self::connect) on.
    pub(super) fn renew(&self, renewed: Renewed) {
        self.primary.store(Arc::new(renewed.0));
        self.renewals.fetch_add(1, Ordering::Release);
    }

    /// The connection, if one is made.
    pub(super) fn current(&self) -> Option<Connected> {
        let slot = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        slot.clone()
    }

    /// After the store failed to answer: with sentinels, drops the connection, so that the next
    /// one asks them where the primary is (it may have moved).
    pub(super) fn failed(&self) {
        if matches!(**self.primary.load(), Primary::Sentinel(_)) {
            let mut slot = self.connection.lock().unwrap_or_else(|e| e.into_inner());
            *slot = None;
        }
    }
}

/// The Redis client for `config`, its sentinels' client, or its cluster's.
pub(super) fn primary(config: &config::SharedPins) -> Result<Primary, SharedError> {
    let certificates = certificates(config)?;
    if config.cluster {
        let patience = config.timeout.max(Duration::from_secs(1));
        let mut builder = ClusterClientBuilder::new([config.url.as_str()])
            .connection_timeout(patience)
            .response_timeout(patience)
            .retries(2);
        if let Some(certificates) = certificates {
            builder = builder.certs(certificates);
        }
        return Ok(Primary::Cluster(builder.build()?));
    }
    if config.sentinels.is_empty() {
        return Ok(Primary::Fixed(match certificates {
            Some(certificates) => redis::Client::build_with_tls(config.url.as_str(), certificates)?,
            None => redis::Client::open(config.url.as_str())?,
        }));
    }
    let sentinels = sentinels(config, certificates)?;
    Ok(Primary::Sentinel(tokio::sync::Mutex::new(sentinels)))
}

/// The client of `config`'s sentinels, which connects to the primary they name: `url`'s host
/// is the name they know it by, its credentials and database are the primary's.
fn sentinels(
    config: &config::SharedPins,
    certificates: Option<redis::TlsCertificates>,
) -> Result<SentinelClient, SharedError> {
    let url = config.url.as_str().into_connection_info()?;
    let master = match url.addr() {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
        _ => {
            let problem = "sentinels need a redis:// or rediss:// url";
            return Err(
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, problem)).into(),
            );
        }
    };
    let sentinels = (config.sentinels.iter()).map(|sentinel| {
        let (host, port) = sentinel.rsplit_once(':').unwrap_or((sentinel, "26379"));
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = port.parse().unwrap_or(26379);
        match certificates {
            Some(_) => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                tls_params: None,
            },
            None => ConnectionAddr::Tcp(host, port),
        }
    });
    let redis = url.redis_settings();
    let mut builder = SentinelClientBuilder::new(sentinels, master, SentinelServerType::Master)?
        .set_client_to_redis_db(redis.db());
    if let Some(username) = redis.username() {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = redis.password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(password) = &config.sentinel_password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    if let Some(certificates) = certificates {
        builder = builder
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_redis_certificates(certificates.clone())
            .set_client_to_sentinel_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_certificates(certificates);
    }
    Ok(builder.build()?)
}

/// For `rediss://`: the CA and client certificate, each file checked here so that a bad one is
/// named at start-up rather than at the first handshake.
fn certificates(
    config: &config::SharedPins,
) -> Result<Option<redis::TlsCertificates>, SharedError> {
    if !config.url.starts_with("rediss://") {
        return Ok(None);
    }
    // The redis crate builds its TLS config with the process's default crypto provider: make
    // it the one the rest of the router uses (an error only says one is installed already).
    let _already = rustls::crypto::ring::default_provider().install_default();
    let read = |path: &Path, error: fn(PathBuf, String) -> TlsError| {
        std::fs::read(path).map_err(|e| error(path.to_path_buf(), e.to_string()))
    };
    let root_cert = match &config.ca {
        Some(ca) => {
            tls::load_ca(ca, &mut rustls::RootCertStore::empty())?;
            Some(read(ca, |path, reason| TlsError::Ca { path, reason })?)
        }
        None => None,
    };
    let client_tls = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            tls::load_certified_key(cert, key)?;
            Some(redis::ClientTlsConfig {
                client_cert: read(cert, |path, reason| TlsError::Cert { path, reason })?,
                client_key: read(key, |path, reason| TlsError::Key { path, reason })?,
            })
        }
        _ => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// A Redis URL without its password, for logs.
pub fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) if at > scheme.len() + 3 => {
            let userinfo = &rest[..at - scheme.len() - 3];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{}", &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
