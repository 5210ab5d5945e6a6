//! The shared source: a PostgreSQL database holding the entities and an ordered change log
//! that every replica follows into its own embedded copy.
//!
//! Why no batch is ever skipped: a writer takes the head row's lock (`FOR UPDATE`) before it
//! reads the head revision, and keeps it until its transaction commits. So revision `n + 1`
//! is only handed out once `n` has committed: revisions are dense and commit in revision
//! order, and any snapshot that sees a revision sees every revision before it. Followers
//! check this anyway: a gap is waited out, never stepped over (see [`Poll`]).
//!
//! Why no write commits after its deadline: the writer tells the transaction its deadline on
//! PostgreSQL's own clock (anchored when the head lock was taken), and a deferred constraint
//! trigger on the head row refuses the COMMIT once that clock has passed it. A replica that
//! pauses anywhere in between cannot carry a write past its deadline; and a replica that
//! pauses inside its transaction holds the head for at most `idle_in_transaction_session_timeout`
//! before PostgreSQL ends its session (its writes roll back and the others' go on).
//!
//! Why an outcome is never misreported: a failure before the COMMIT was sent, or an error
//! PostgreSQL answered (a statement's, or the deadline trigger's at COMMIT), means nothing was
//! applied; a COMMIT sent and not answered is [`SourceError::OutcomeUnknown`], which the
//! client resolves with the write's idempotency key ([`PgSource::keyed_write`]).
//!
//! Tables: `blue_authz_head` (one row: the newest revision, how far the log is pruned, the
//! source's id), `blue_authz_entities` (uid text, entity JSON, the revision of its last change:
//! the current state, read by a new replica's snapshot), `blue_authz_changes` (revision, commit
//! time, the batch) and `blue_authz_writes` (idempotency key, revision, fingerprint, commit
//! time: kept for the key window).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Statement};

use super::{ChangeSet, Changes, ABANDONED};

/// How long one call to PostgreSQL may take before the source counts as unreachable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The notification channel writers signal on commit.
const CHANNEL: &str = "blue_authz_changes";
/// Serializes the first-time creation of the tables between replicas starting together.
const SETUP_LOCK: i64 = 0x626c_7565_617a;

const SETUP: &str = "
CREATE TABLE IF NOT EXISTS blue_authz_head (
    id int PRIMARY KEY CHECK (id = 1),
    revision bigint NOT NULL,
    pruned_through bigint NOT NULL,
    source_id text NOT NULL
);
CREATE TABLE IF NOT EXISTS blue_authz_entities (
    uid text PRIMARY KEY,
    json text NOT NULL
);
CREATE TABLE IF NOT EXISTS blue_authz_changes (
    revision bigint PRIMARY KEY,
    committed_at timestamptz NOT NULL DEFAULT now(),
    batch text NOT NULL
);
INSERT INTO blue_authz_head (id, revision, pruned_through, source_id)
    VALUES (1, 0, 0, md5(random()::text || clock_timestamp()::text))
    ON CONFLICT (id) DO NOTHING;
ALTER TABLE blue_authz_entities ADD COLUMN IF NOT EXISTS revision bigint NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS blue_authz_writes (
    key text PRIMARY KEY,
    revision bigint NOT NULL,
    fingerprint text NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS blue_authz_writes_committed_at ON blue_authz_writes (committed_at);
CREATE OR REPLACE FUNCTION blue_authz_check_deadline() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    deadline text := current_setting('blue_authz.deadline_us', true);
BEGIN
    IF deadline IS NOT NULL AND deadline <> ''
       AND extract(epoch FROM clock_timestamp()) * 1000000 > deadline::bigint THEN
        RAISE EXCEPTION 'the write''s deadline passed before it committed'
            USING ERRCODE = 'BA001';
    END IF;
    RETURN NULL;
END $$;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'blue_authz_deadline'
                   AND tgrelid = 'blue_authz_head'::regclass) THEN
        CREATE CONSTRAINT TRIGGER blue_authz_deadline AFTER UPDATE ON blue_authz_head
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            EXECUTE FUNCTION blue_authz_check_deadline();
    END IF;
END $$;
";

/// The SQLSTATE the deadline trigger raises at COMMIT.
const DEADLINE_PASSED: &str = "BA001";

/// How a replica's transactions on the source are bounded (settings).
#[derive(Debug, Clone, Copy)]
pub struct SourceLimits {
    /// How long a writer waits for the head lock (`lock_timeout`).
    pub lock_timeout: Duration,
    /// How long one statement may run (`statement_timeout`).
    pub statement_timeout: Duration,
    /// How long a writer's transaction may sit idle before PostgreSQL ends its session and
    /// rolls it back (`idle_in_transaction_session_timeout`): the longest a paused replica can
    /// hold the head.
    pub idle_timeout: Duration,
    /// How long idempotency keys are remembered.
    pub key_window: Duration,
}

impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits {
            lock_timeout: Duration::from_secs(4),
            statement_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(2),
            key_window: Duration::from_secs(24 * 3600),
        }
    }
}

impl SourceLimits {
    /// How long a writer's call waits for an answer before it counts as unanswered.
    fn call_timeout(&self) -> Duration {
        self.lock_timeout.max(self.statement_timeout) + Duration::from_secs(1)
    }
}

/// Why a call to the shared source failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// Connecting, a query or the transaction failed (the database is down or unreachable,
    /// or refused the statement) before any COMMIT was sent; nothing of the call was applied.
    #[error("the shared source {db} did not answer: {message}")]
    Unavailable { db: String, message: String },
    /// A COMMIT was sent and not answered: the batch may or may not have committed.
    #[error("the shared source {db} did not answer a COMMIT: {message}")]
    OutcomeUnknown { db: String, message: String },
    /// The source refused the COMMIT because the write's deadline had passed on its clock;
    /// nothing was applied.
    #[error("the shared source {db} refused a commit after the write's deadline")]
    DeadlinePassed { db: String },
    /// The source holds something this version cannot read.
    #[error("the shared source {db} holds an unreadable change batch {revision}: {message}")]
    Corrupt {
        db: String,
        revision: u64,
        message: String,
    },
}

/// The head of the log as one snapshot saw it, with the batches after a revision.
#[derive(Debug)]
pub enum Poll {
    /// The batches after the asked revision (consecutive, in order; possibly none) and the
    /// newest revision.
    Batches { head: u64, batches: Vec<ChangeSet> },
    /// The batches after the asked revision are no longer in the log: it is pruned through
    /// `pruned_through`.
    Pruned { pruned_through: u64, head: u64 },
}

/// The source's identity and head, as read at connection time.
#[derive(Debug, Clone)]
pub struct Head {
    pub source_id: String,
    pub revision: u64,
    pub pruned_through: u64,
}

/// A batch as the log stores it.
#[derive(Serialize)]
struct BatchOut<'a> {
    puts: Vec<(&'a str, &'a RawValue)>,
    deletes: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<&'a str>,
}

#[derive(Deserialize)]
struct BatchIn {
    puts: Vec<(String, Box<RawValue>)>,
    deletes: Vec<String>,
    #[serde(default)]
    schema: Option<String>,
}

/// A shared PostgreSQL source.
pub struct PgSource {
    config: Config,
    /// The database as logs and errors name it (no password).
    name: String,
    /// The connection writes use (one write transaction at a time per replica), with its
    /// prepared statements.
    writer: Arc<Mutex<Option<WriterConn>>>,
    /// The connection reads use (single statements, safe to share), listening for commits,
    /// with the poll's statement prepared.
    reader: Mutex<Option<Arc<ReaderConn>>>,
    /// Woken by a commit notification (followers also poll: this is only a hint).
    pub notified: Arc<Notify>,
    /// Whether the read connection listens for commit notifications.
    listen: bool,
    limits: SourceLimits,
}

impl PgSource {
    /// A source for a `postgres://` URL (or a key=value connection string). Connects lazily.
    pub fn new(url: &str) -> Result<Self, SourceError> {
        let mut config: Config = url.parse().map_err(|e| SourceError::Unavailable {
            db: "(the source setting)".into(),
            message: format!("not a PostgreSQL connection string: {e}"),
        })?;
        config.connect_timeout(CALL_TIMEOUT);
        config.keepalives_idle(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("blue-authz");
        }
        let hosts = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect::<Vec<_>>()
            .join(",");
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let name = format!(
            "postgres://{}@{hosts}:{port}/{}",
            config.get_user().unwrap_or(""),
            config.get_dbname().unwrap_or("")
        );
        Ok(PgSource {
            config,
            name,
            writer: Arc::new(Mutex::new(None)),
            reader: Mutex::new(None),
            notified: Arc::new(Notify::new()),
            listen: true,
            limits: SourceLimits::default(),
        })
    }

    /// Bounds on this replica's transactions.
    pub fn with_limits(mut self, limits: SourceLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> SourceLimits {
        self.limits
    }

    /// Polls only: no commit notifications.
    pub fn without_notifications(mut self) -> Self {
        self.listen = false;
        self
    }

    /// The database, as logs name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> SourceError {
        SourceError::Unavailable {
            db: self.name.clone(),
            message: e.to_string(),
        }
    }

    /// Runs one call with the call timeout.
    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, SourceError> {
        match tokio::time::timeout(CALL_TIMEOUT, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.unavailable(describe(&e))),
            Err(_) => Err(self.unavailable(format!("no answer within {CALL_TIMEOUT:?}"))),
        }
    }

    /// A new connection; with `listen`, commit notifications wake [`PgSource::notified`].
    async fn connect(&self, listen: bool) -> Result<Client, SourceError> {
        let (client, mut conn) = self.timed(self.config.connect(NoTls)).await?;
        let notified = self.notified.clone();
        tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => notified.notify_one(),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "shared source connection ended");
                        break;
                    }
                }
            }
        });
        if listen {
            self.timed(client.batch_execute(&format!("LISTEN {CHANNEL}")))
                .await?;
        }
        Ok(client)
    }

    /// Creates the tables if they are missing (and the search path's schema, if none of its
    /// schemas exists: `options=-csearch_path=authz` names a schema to use, and PostgreSQL
    /// would refuse every table with "no schema has been selected to create in"), and reads
    /// the head.
    pub async fn setup(&self) -> Result<Head, SourceError> {
        let mut client = self.connect(false).await?;
        let txn = self.timed(client.transaction()).await?;
        self.timed(txn.execute("SELECT pg_advisory_xact_lock($1)", &[&SETUP_LOCK]))
            .await?;
        let row = self
            .timed(txn.query_one(
                "SELECT current_schema(), current_setting('search_path')",
                &[],
            ))
            .await?;
        let (current, path): (Option<String>, String) = (row.get(0), row.get(1));
        if current.is_none() {
            let Some(schema) = first_schema(&path) else {
                return Err(self.unavailable(format!(
                    "the search path `{path}` names no schema to create the tables in"
                )));
            };
            let create = format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&schema));
            self.timed(txn.batch_execute(&create)).await.map_err(|e| {
                self.unavailable(format!(
                    "cannot create schema `{schema}`, the first of the search path, which does not exist: {}",
                    match e {
                        SourceError::Unavailable { message, .. } => message,
                        other => other.to_string(),
                    }
                ))
            })?;
            tracing::info!(%schema, source = %self.name, "created the search path's schema, which did not exist");
        }
        self.timed(txn.batch_execute(SETUP)).await?;
        self.timed(txn.commit()).await?;
        self.head().await
    }

    /// The shared read connection, connecting (listening, preparing the poll) if needed.
    async fn reader(&self) -> Result<Arc<ReaderConn>, SourceError> {
        let mut slot = self.reader.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(c.clone());
        }
        *slot = None;
        let client = self.connect(self.listen).await?;
        let poll = self.timed(client.prepare(POLL)).await?;
        let conn = Arc::new(ReaderConn { client, poll });
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// A read's result; after a failure the read connection is dropped, so the next call
    /// reconnects.
    async fn read_failed_on<T>(&self, result: Result<T, SourceError>) -> Result<T, SourceError> {
        if result.is_err() {
            *self.reader.lock().await = None;
        }
        result
    }

    /// The source's id and head.
    pub async fn head(&self) -> Result<Head, SourceError> {
        let reader = self.reader().await?;
        let row = self
            .timed(reader.client.query_one(
                "SELECT source_id, revision, pruned_through FROM blue_authz_head WHERE id = 1",
                &[],
            ))
            .await;
        Ok(head_of(&self.read_failed_on(row).await?))
    }

    /// Up to `limit` batches after revision `after`, read in one snapshot with the head.
    pub async fn poll(&self, after: u64, limit: u32) -> Result<Poll, SourceError> {
        let reader = self.reader().await?;
        let rows = self
            .timed(
                reader
                    .client
                    .query(&reader.poll, &[&(after as i64), &(limit as i64)]),
            )
            .await;
        let rows = self.read_failed_on(rows).await?;
        let Some(first) = rows.first() else {
            return Err(self.unavailable("the head row is missing"));
        };
        let head = first.get::<_, i64>(0) as u64;
        let pruned_through = first.get::<_, i64>(1) as u64;
        if after < pruned_through {
            return Ok(Poll::Pruned {
                pruned_through,
                head,
            });
        }
        let mut batches = Vec::with_capacity(rows.len());
        for row in &rows {
            let Some(revision) = row.get::<_, Option<i64>>(2) else {
                break;
            };
            let revision = revision as u64;
            // Dense and in order by construction; stop at a gap rather than step over it.
            if revision != after + 1 + batches.len() as u64 {
                tracing::warn!(
                    expected = after + 1 + batches.len() as u64,
                    found = revision,
                    "a gap in the shared change log: waiting for it to fill"
                );
                break;
            }
            let at = row.get::<_, Option<i64>>(3).unwrap_or(0).max(0) as u64;
            batches.push(decode(&self.name, revision, at, row.get(4))?);
        }
        Ok(Poll::Batches { head, batches })
    }

    /// Reads one consistent snapshot of every entity, sending it `chunk` entities at a time,
    /// and returns the head it is the state of.
    pub async fn snapshot(
        &self,
        chunk: u32,
        out: &tokio::sync::mpsc::Sender<Vec<(String, Vec<u8>, u64)>>,
    ) -> Result<Head, SourceError> {
        let mut client = self.connect(false).await?;
        let txn = self
            .timed(
                client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start(),
            )
            .await?;
        let row = self
            .timed(txn.query_one(
                "SELECT source_id, revision, pruned_through FROM blue_authz_head WHERE id = 1",
                &[],
            ))
            .await?;
        let head = head_of(&row);
        let portal = self
            .timed(txn.bind("SELECT uid, json, revision FROM blue_authz_entities", &[]))
            .await?;
        loop {
            let rows = self.timed(txn.query_portal(&portal, chunk as i32)).await?;
            if rows.is_empty() {
                break;
            }
            let items = rows
                .iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        r.get::<_, String>(1).into_bytes(),
                        r.get::<_, i64>(2).max(0) as u64,
                    )
                })
                .collect();
            if out.send(items).await.is_err() {
                return Err(self.unavailable("the snapshot's reader stopped"));
            }
        }
        self.timed(txn.commit()).await?;
        Ok(head)
    }

    /// A writer connection with its statements prepared (all in one round trip), its
    /// transactions bounded by the source limits.
    async fn writer_conn(&self) -> Result<WriterConn, SourceError> {
        let client = self.connect(false).await?;
        let notify_text = format!("NOTIFY {CHANNEL}");
        let l = self.limits;
        let session = format!(
            "SET lock_timeout = '{}ms'; SET statement_timeout = '{}ms'; \
             SET idle_in_transaction_session_timeout = '{}ms'",
            l.lock_timeout.as_millis().max(1),
            l.statement_timeout.as_millis().max(1),
            l.idle_timeout.as_millis().max(1),
        );
        let prepared = async {
            let (_, select_head, clock, batches_after, upsert, delete, insert_change) = tokio::try_join!(
                client.batch_execute(&session),
                client.prepare("SELECT revision FROM blue_authz_head WHERE id = 1 FOR UPDATE"),
                client.prepare("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint"),
                client.prepare(
                    "SELECT revision, (extract(epoch FROM committed_at) * 1000)::bigint, batch
                     FROM blue_authz_changes WHERE revision > $1 ORDER BY revision"
                ),
                client.prepare(
                    "INSERT INTO blue_authz_entities (uid, json, revision)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
                     ON CONFLICT (uid) DO UPDATE
                     SET json = EXCLUDED.json, revision = EXCLUDED.revision"
                ),
                client.prepare("DELETE FROM blue_authz_entities WHERE uid = ANY($1::text[])"),
                client.prepare(
                    "INSERT INTO blue_authz_changes (revision, batch)
                     SELECT * FROM unnest($1::bigint[], $2::text[])"
                ),
            )?;
            let (update_head, notify, deadline, keys, insert_keys, last_changes) = tokio::try_join!(
                client.prepare("UPDATE blue_authz_head SET revision = $1 WHERE id = 1"),
                client.prepare(&notify_text),
                client.prepare("SELECT set_config('blue_authz.deadline_us', $1::bigint::text, true)"),
                client.prepare(
                    "SELECT key, revision, fingerprint FROM blue_authz_writes
                     WHERE key = ANY($1::text[]) AND committed_at >= now() - make_interval(secs => $2)"
                ),
                client.prepare(
                    "INSERT INTO blue_authz_writes (key, revision, fingerprint)
                     SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])
                     ON CONFLICT (key) DO UPDATE SET revision = EXCLUDED.revision,
                         fingerprint = EXCLUDED.fingerprint, committed_at = now()"
                ),
                client.prepare(
                    "SELECT uid, revision FROM blue_authz_entities WHERE uid = ANY($1::text[])"
                ),
            )?;
            Ok::<_, tokio_postgres::Error>(Statements {
                select_head,
                clock,
                batches_after,
                upsert,
                delete,
                insert_change,
                update_head,
                notify,
                deadline,
                keys,
                insert_keys,
                last_changes,
            })
        };
        let statements = self.timed(prepared).await?;
        Ok(WriterConn { client, statements })
    }

    /// Starts a write that must commit by `deadline`: takes the head row's lock (every other
    /// writer, on any replica, waits until this one commits or rolls back; this one waits at
    /// most the lock timeout, and never past the deadline), reads the head revision, and
    /// anchors the deadline on PostgreSQL's clock.
    pub async fn begin_write(&self, deadline: Instant) -> Result<WriteTxn, SourceError> {
        let mut guard = self.writer.clone().lock_owned().await;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SourceError::DeadlinePassed {
                db: self.name.clone(),
            });
        }
        if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            *guard = Some(self.writer_conn().await?);
        }
        let conn = guard.as_ref().expect("connected above");
        let wait = left.min(self.limits.lock_timeout).as_millis().max(1);
        let begin = format!("BEGIN; SET LOCAL lock_timeout = '{wait}ms'");
        // One round trip: BEGIN, the locking read and PostgreSQL's clock once the lock is held,
        // pipelined.
        let began = async {
            let (begun, head, clock) = tokio::join!(
                conn.client.batch_execute(&begin),
                conn.client.query_one(&conn.statements.select_head, &[]),
                conn.client.query_one(&conn.statements.clock, &[]),
            );
            // The first statement's error, in the order they were sent: a lock wait that
            // timed out is reported as such, not as the "transaction is aborted" of the
            // statement after it.
            begun?;
            Ok::<_, tokio_postgres::Error>((head?, clock?))
        };
        let timeout = self.limits.call_timeout();
        match tokio::time::timeout(timeout, began).await {
            Ok(Ok((head, clock))) => Ok(WriteTxn {
                head: head.get::<_, i64>(0) as u64,
                // Read after the reply came: PostgreSQL's clock was at least `source_now_us`
                // then, so a deadline placed on its clock from here is never later than the
                // real one.
                anchor: (clock.get::<_, i64>(0), Instant::now()),
                guard,
                open: true,
                name: self.name.clone(),
                timeout,
            }),
            Ok(Err(e)) => {
                // A half-begun transaction: drop the connection (the server rolls it back).
                *guard = None;
                Err(self.unavailable(describe(&e)))
            }
            Err(_) => {
                *guard = None;
                Err(self.unavailable(format!("no answer within {timeout:?}")))
            }
        }
    }

    /// Whether a write could take the head now: begins a write and rolls it back.
    pub async fn probe_write(&self) -> Result<(), SourceError> {
        let txn = self
            .begin_write(Instant::now() + self.limits.call_timeout())
            .await?;
        txn.rollback().await;
        Ok(())
    }

    /// The revision and fingerprint of the write that committed `key` within the key window;
    /// waits for a write holding the head (which may be committing it) to finish first, so a
    /// "not committed" stays true.
    /// With `abandon`, a key that has not committed is recorded as abandoned (revision 0),
    /// in the same transaction, so that a write still carrying it never commits.
    pub async fn keyed_write(
        &self,
        key: &str,
        abandon: bool,
    ) -> Result<Option<(u64, String)>, SourceError> {
        let client = self.connect(false).await?;
        let wait = self.limits.lock_timeout.as_millis().max(1);
        let window = self.limits.key_window.as_secs_f64();
        let work = async {
            client
                .batch_execute(&format!(
                    "BEGIN; SET LOCAL lock_timeout = '{wait}ms'; \
                     SELECT revision FROM blue_authz_head WHERE id = 1 FOR SHARE"
                ))
                .await?;
            if abandon {
                client
                    .execute(
                        "INSERT INTO blue_authz_writes (key, revision, fingerprint)
                         VALUES ($1, 0, $2)
                         ON CONFLICT (key) DO UPDATE SET revision = 0, fingerprint = $2,
                             committed_at = now()
                         WHERE blue_authz_writes.committed_at < now() - make_interval(secs => $3)",
                        &[&key, &ABANDONED, &window],
                    )
                    .await?;
            }
            let rows = client
                .query(
                    "SELECT revision, fingerprint FROM blue_authz_writes
                     WHERE key = $1 AND committed_at >= now() - make_interval(secs => $2)",
                    &[&key, &window],
                )
                .await?;
            client.batch_execute("COMMIT").await?;
            Ok::<_, tokio_postgres::Error>(rows)
        };
        let rows = match tokio::time::timeout(self.limits.call_timeout(), work).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => return Err(self.unavailable(describe(&e))),
            Err(_) => return Err(self.unavailable("no answer in time")),
        };
        Ok(rows
            .first()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, String>(1))))
    }

    /// Forgets idempotency keys older than the key window.
    pub async fn prune_keys(&self) -> Result<u64, SourceError> {
        let client = self.connect(false).await?;
        let n = self
            .timed(client.execute(
                "DELETE FROM blue_authz_writes WHERE committed_at < now() - make_interval(secs => $1)",
                &[&self.limits.key_window.as_secs_f64()],
            ))
            .await?;
        Ok(n)
    }

    /// Prunes the log of batches committed before `max_age` (the newest batch is kept).
    pub async fn prune_older_than(&self, max_age: Duration) -> Result<u64, SourceError> {
        let mut client = self.connect(false).await?;
        let txn = self.timed(client.transaction()).await?;
        let row = self
            .timed(txn.query_one(
                "SELECT COALESCE(max(revision), 0) FROM blue_authz_changes
                 WHERE committed_at < now() - make_interval(secs => $1)
                   AND revision < (SELECT revision FROM blue_authz_head WHERE id = 1)",
                &[&max_age.as_secs_f64()],
            ))
            .await?;
        let through: i64 = row.get(0);
        if through > 0 {
            self.timed(prune(&txn, through)).await?;
        }
        self.timed(txn.commit()).await?;
        Ok(through as u64)
    }
}

/// The head from a row of `SELECT source_id, revision, pruned_through`.
fn head_of(row: &tokio_postgres::Row) -> Head {
    Head {
        source_id: row.get(0),
        revision: row.get::<_, i64>(1) as u64,
        pruned_through: row.get::<_, i64>(2) as u64,
    }
}

/// Moves the pruned mark and deletes the batches through it, in one transaction: a follower's
/// snapshot sees both or neither.
async fn prune(
    txn: &impl tokio_postgres::GenericClient,
    through: i64,
) -> Result<(), tokio_postgres::Error> {
    txn.execute(
        "WITH gone AS (DELETE FROM blue_authz_changes WHERE revision <= $1)
         UPDATE blue_authz_head SET pruned_through = GREATEST(pruned_through, $1) WHERE id = 1",
        &[&through],
    )
    .await?;
    Ok(())
}

/// The followers' read of the head and the batches after a revision, in one snapshot.
const POLL: &str = "SELECT h.revision, h.pruned_through, c.revision,
        (extract(epoch FROM c.committed_at) * 1000)::bigint, c.batch
    FROM blue_authz_head h LEFT JOIN LATERAL (
        SELECT revision, committed_at, batch FROM blue_authz_changes
        WHERE revision > $1 ORDER BY revision LIMIT $2) c ON true
    WHERE h.id = 1";

/// The read connection, with the poll prepared once (not parsed and planned on every poll).
struct ReaderConn {
    client: Client,
    poll: Statement,
}

/// The writer connection's prepared statements.
struct Statements {
    select_head: Statement,
    clock: Statement,
    batches_after: Statement,
    upsert: Statement,
    delete: Statement,
    insert_change: Statement,
    update_head: Statement,
    notify: Statement,
    deadline: Statement,
    keys: Statement,
    insert_keys: Statement,
    last_changes: Statement,
}

/// A writer connection.
struct WriterConn {
    client: Client,
    statements: Statements,
}

/// An idempotency key a commit records, with the revision it committed and its fingerprint.
pub struct KeyRecord<'a> {
    pub key: &'a str,
    pub revision: u64,
    pub fingerprint: &'a str,
}

/// A PostgreSQL error as an operator needs it: the server's own severity, SQLSTATE and message
/// (tokio-postgres alone says "db error"), or the driver's description with its cause.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// The first schema a search path names, other than `"$user"`: `authz` of `authz, public`.
fn first_schema(search_path: &str) -> Option<String> {
    search_path
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "\"$user\"" && *s != "$user")
        .map(
            |s| match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                Some(quoted) => quoted.replace("\"\"", "\""),
                None => s.to_lowercase(),
            },
        )
        .next()
}

/// A PostgreSQL identifier, quoted.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether PostgreSQL answered this error for a statement it refused (the transaction is
/// aborted and rolls back), as opposed to the connection failing or the server ending the
/// session, after which a COMMIT already sent may or may not have been applied.
fn refused(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        d.parsed_severity() == Some(tokio_postgres::error::Severity::Error)
            // Ended for idling in its transaction: it had not been sent a COMMIT.
            || d.code() == &tokio_postgres::error::SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
    })
}

/// An open write transaction holding the head row's lock. Dropped without
/// [`WriteTxn::commit`], it is rolled back (its connection is closed).
pub struct WriteTxn {
    head: u64,
    /// PostgreSQL's clock (Unix µs) when the lock was taken, and this process's clock no
    /// earlier than that.
    anchor: (i64, Instant),
    guard: OwnedMutexGuard<Option<WriterConn>>,
    open: bool,
    name: String,
    timeout: Duration,
}

impl WriteTxn {
    /// The newest committed revision; this batch will be `head + 1`.
    pub fn head(&self) -> u64 {
        self.head
    }

    fn conn(&self) -> &WriterConn {
        self.guard
            .as_ref()
            .expect("a write transaction has a connection")
    }

    fn fail(&mut self, e: impl std::fmt::Display) -> SourceError {
        self.open = false;
        *self.guard = None;
        SourceError::Unavailable {
            db: self.name.clone(),
            message: e.to_string(),
        }
    }

    /// A deadline of this process's clock on PostgreSQL's (Unix µs), never later than it.
    fn on_source_clock(&self, deadline: Instant) -> i64 {
        let (source_us, local) = self.anchor;
        let ahead = deadline.saturating_duration_since(local).as_micros() as i64;
        let behind = local.saturating_duration_since(deadline).as_micros() as i64;
        source_us.saturating_add(ahead).saturating_sub(behind)
    }

    /// One query in this transaction; a failure ends it (nothing was applied).
    async fn query(
        &mut self,
        statement: impl FnOnce(&Statements) -> &Statement,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, SourceError> {
        let conn = self.conn();
        let rows = tokio::time::timeout(
            self.timeout,
            conn.client.query(statement(&conn.statements), params),
        )
        .await;
        match rows {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(self.fail(describe(&e))),
            Err(_) => Err(self.fail("no answer in time")),
        }
    }

    /// The writes among `keys` already committed within the key window: key -> (revision,
    /// fingerprint).
    pub async fn committed_keys(
        &mut self,
        keys: &[&str],
        window: Duration,
    ) -> Result<HashMap<String, (u64, String)>, SourceError> {
        let rows = self
            .query(|s| &s.keys, &[&keys, &window.as_secs_f64()])
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    (r.get::<_, i64>(1) as u64, r.get::<_, String>(2)),
                )
            })
            .collect())
    }

    /// For each uid, the revision of the entity's last change (None: it does not exist).
    pub async fn last_changes(&mut self, uids: &[&str]) -> Result<Vec<Option<u64>>, SourceError> {
        let rows = self.query(|s| &s.last_changes, &[&uids]).await?;
        let found: HashMap<String, u64> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).max(0) as u64))
            .collect();
        Ok(uids.iter().map(|u| found.get(*u).copied()).collect())
    }

    /// The batches after `after` up to the head, in order (what this replica has not yet
    /// applied).
    pub async fn batches_after(&mut self, after: u64) -> Result<Vec<ChangeSet>, SourceError> {
        let rows = self.query(|s| &s.batches_after, &[&(after as i64)]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let revision = row.get::<_, i64>(0) as u64;
            let at = row.get::<_, Option<i64>>(1).unwrap_or(0).max(0) as u64;
            out.push(decode(&self.name, revision, at, row.get(2))?);
        }
        if out.first().is_some_and(|b| b.revision() != after + 1)
            || (out.is_empty() && after < self.head)
        {
            return Err(self.fail(format!(
                "the change log no longer holds the batches after revision {after} (pruned)"
            )));
        }
        Ok(out)
    }

    /// Writes the batches (consecutive revisions from `head + 1`) in this one transaction,
    /// records each in the log as its own revision and each key with its revision, prunes the
    /// log to `keep` batches (0: no count limit) and commits, unless PostgreSQL's clock has
    /// passed `deadline` by then. Each batch records that its entities conform to `schema`.
    /// Returns only after the commit answered.
    pub async fn commit(
        mut self,
        batches: &[&Changes],
        schema: Option<&str>,
        keys: &[KeyRecord<'_>],
        keep: u64,
        deadline: Instant,
    ) -> Result<(), SourceError> {
        for (i, b) in batches.iter().enumerate() {
            assert_eq!(
                b.revision,
                self.head + 1 + i as u64,
                "batches must follow the head, one revision each"
            );
        }
        let Some(last) = batches.last() else {
            self.rollback().await;
            return Ok(());
        };
        let mut texts = Vec::with_capacity(batches.len());
        for b in batches {
            match encode(b, schema) {
                Ok(t) => texts.push(t),
                Err(e) => return Err(self.fail(format!("cannot encode the batch: {e}"))),
            }
        }
        let revisions: Vec<i64> = batches.iter().map(|b| b.revision as i64).collect();
        let revision = last.revision as i64;
        // Each entity's state after the last batch (one row each: an upsert may not touch a
        // row twice), with the revision that made it.
        let mut last_state: HashMap<&str, (Option<&[u8]>, i64)> = HashMap::new();
        let mut order = Vec::new();
        for b in batches {
            let at = b.revision as i64;
            let puts = b.puts.iter().map(|(u, j)| (u.as_str(), Some(j.as_slice())));
            let deletes = b.deletes.iter().map(|u| (u.as_str(), None));
            for (uid, json) in puts.chain(deletes) {
                if last_state.insert(uid, (json, at)).is_none() {
                    order.push(uid);
                }
            }
        }
        let (mut uids, mut jsons, mut ats, mut deletes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for uid in order {
            match last_state[uid] {
                (Some(json), at) => {
                    uids.push(uid);
                    jsons.push(std::str::from_utf8(json).unwrap_or("null"));
                    ats.push(at);
                }
                (None, _) => deletes.push(uid),
            }
        }
        let key_names: Vec<&str> = keys.iter().map(|k| k.key).collect();
        let key_revisions: Vec<i64> = keys.iter().map(|k| k.revision as i64).collect();
        let key_prints: Vec<&str> = keys.iter().map(|k| k.fingerprint).collect();
        let deadline_us = self.on_source_clock(deadline);
        let deadline_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&deadline_us];
        let conn = self.conn();
        let (client, st) = (&conn.client, &conn.statements);
        let work = async {
            // One round trip for the statements and the COMMIT (pipelined). Each result is
            // kept: which failed, and how, decides whether the batch is known not applied.
            let upserts = async {
                if uids.is_empty() {
                    Ok(0)
                } else {
                    client.execute(&st.upsert, &[&uids, &jsons, &ats]).await
                }
            };
            let removals = async {
                if deletes.is_empty() {
                    Ok(0)
                } else {
                    client.execute(&st.delete, &[&deletes]).await
                }
            };
            let pruned = async {
                if keep > 0 && revision > keep as i64 {
                    prune(client, revision - keep as i64).await
                } else {
                    Ok(())
                }
            };
            let recorded = async {
                if key_names.is_empty() {
                    Ok(0)
                } else {
                    client
                        .execute(&st.insert_keys, &[&key_names, &key_revisions, &key_prints])
                        .await
                }
            };
            let change_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                [&revisions, &texts];
            let head_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&revision];
            let (deadline_set, upserts, removals, changes, head, pruned, recorded, notify, commit) = tokio::join!(
                client.execute(&st.deadline, &deadline_params),
                upserts,
                removals,
                client.execute(&st.insert_change, &change_params),
                client.execute(&st.update_head, &head_params),
                pruned,
                recorded,
                client.execute(&st.notify, &[]),
                client.batch_execute("COMMIT"),
            );
            let before = [
                deadline_set.err(),
                upserts.err(),
                removals.err(),
                changes.err(),
                head.err(),
                pruned.err(),
                recorded.err(),
                notify.err(),
            ];
            (before.into_iter().flatten().collect::<Vec<_>>(), commit)
        };
        let answered = tokio::time::timeout(self.timeout, work).await;
        self.open = false;
        let name = self.name.clone();
        let outcome = match answered {
            Err(_) => Err(SourceError::OutcomeUnknown {
                db: name,
                message: format!("no answer within {:?}", self.timeout),
            }),
            Ok((before, commit)) => {
                if let Some(e) = before.iter().find(|e| refused(e)) {
                    // A refused statement aborted the transaction: its COMMIT rolled back.
                    Err(SourceError::Unavailable {
                        db: name,
                        message: describe(e),
                    })
                } else {
                    match commit {
                        Ok(()) if before.is_empty() => Ok(()),
                        Ok(()) => Err(SourceError::OutcomeUnknown {
                            db: name,
                            message: describe(&before[0]),
                        }),
                        Err(e) if e.code().is_some_and(|c| c.code() == DEADLINE_PASSED) => {
                            Err(SourceError::DeadlinePassed { db: name })
                        }
                        Err(e) if refused(&e) => Err(SourceError::Unavailable {
                            db: name,
                            message: describe(&e),
                        }),
                        Err(e) => Err(SourceError::OutcomeUnknown {
                            db: name,
                            message: describe(&e),
                        }),
                    }
                }
            }
        };
        if outcome.is_err() {
            *self.guard = None;
        }
        outcome
    }

    /// Tells the source this transaction's client is at work (it is not idle), so that the
    /// idle-in-transaction timeout ends only a client that stopped. A failure is left to the
    /// commit, which then fails as the transaction's end says.
    pub async fn keepalive(&self) {
        let conn = self.conn();
        let _ = tokio::time::timeout(self.timeout, conn.client.simple_query("SELECT 1")).await;
    }

    /// Ends the transaction without writing.
    pub async fn rollback(mut self) {
        let ok = matches!(
            tokio::time::timeout(self.timeout, self.conn().client.batch_execute("ROLLBACK")).await,
            Ok(Ok(()))
        );
        if ok {
            self.open = false;
        }
    }
}

impl Drop for WriteTxn {
    fn drop(&mut self) {
        if self.open {
            // Closing the connection makes the server roll the transaction back.
            *self.guard = None;
        }
    }
}

fn encode(changes: &Changes, schema: Option<&str>) -> Result<String, serde_json::Error> {
    let raws = changes
        .puts
        .iter()
        .map(|(_, json)| serde_json::from_slice::<&RawValue>(json))
        .collect::<Result<Vec<_>, _>>()?;
    let batch = BatchOut {
        puts: changes
            .puts
            .iter()
            .zip(raws)
            .map(|((uid, _), raw)| (uid.as_str(), raw))
            .collect(),
        deletes: &changes.deletes,
        schema,
    };
    serde_json::to_string(&batch)
}

fn decode(name: &str, revision: u64, at: u64, text: &str) -> Result<ChangeSet, SourceError> {
    let batch: BatchIn = serde_json::from_str(text).map_err(|e| SourceError::Corrupt {
        db: name.to_string(),
        revision,
        message: e.to_string(),
    })?;
    Ok(ChangeSet {
        changes: Changes {
            revision,
            puts: batch
                .puts
                .into_iter()
                .map(|(uid, json)| (uid, json.get().as_bytes().to_vec()))
                .collect(),
            deletes: batch.deletes,
        },
        schema: batch.schema,
        committed_at_unix_ms: at,
        ..Default::default()
    })
}
