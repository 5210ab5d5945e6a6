//! The shared source: a PostgreSQL database holding the entities and an ordered change log
//! that every replica follows into its own embedded copy.
//!
//! Why no batch is ever skipped: a writer takes the head row's lock (`FOR UPDATE`) before it
//! reads the head revision, and keeps it until its transaction commits. So revision `n + 1`
//! is only handed out once `n` has committed: revisions are dense and commit in revision
//! order, and any snapshot that sees a revision sees every revision before it. Followers
//! check this anyway: a gap is waited out, never stepped over (see [`Poll`]).
//!
//! Tables: `blue_authz_head` (one row: the newest revision, how far the log is pruned, the
//! source's id), `blue_authz_entities` (uid text, entity JSON: the current state, read by a
//! new replica's snapshot) and `blue_authz_changes` (revision, commit time, the batch).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{Mutex, Notify, OwnedMutexGuard};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Statement};

use super::ChangeSet;

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
";

/// Why a call to the shared source failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// Connecting, a query or the transaction failed (the database is down or unreachable,
    /// or refused the statement); nothing of the call was applied.
    #[error("the shared source {db} did not answer: {message}")]
    Unavailable { db: String, message: String },
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
        })
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
    async fn timed<T, E: std::fmt::Display>(
        &self,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, SourceError> {
        match tokio::time::timeout(CALL_TIMEOUT, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.unavailable(e.to_string())),
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

    /// Creates the tables if they are missing and reads the head.
    pub async fn setup(&self) -> Result<Head, SourceError> {
        let mut client = self.connect(false).await?;
        let txn = self.timed(client.transaction()).await?;
        self.timed(txn.execute("SELECT pg_advisory_xact_lock($1)", &[&SETUP_LOCK]))
            .await?;
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
        out: &tokio::sync::mpsc::Sender<Vec<(String, Vec<u8>)>>,
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
            .timed(txn.bind("SELECT uid, json FROM blue_authz_entities", &[]))
            .await?;
        loop {
            let rows = self.timed(txn.query_portal(&portal, chunk as i32)).await?;
            if rows.is_empty() {
                break;
            }
            let items = rows
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1).into_bytes()))
                .collect();
            if out.send(items).await.is_err() {
                return Err(self.unavailable("the snapshot's reader stopped"));
            }
        }
        self.timed(txn.commit()).await?;
        Ok(head)
    }

    /// A writer connection with its statements prepared (all in one round trip).
    async fn writer_conn(&self) -> Result<WriterConn, SourceError> {
        let client = self.connect(false).await?;
        let notify_text = format!("NOTIFY {CHANNEL}");
        let prepared = async {
            let (select_head, batches_after, upsert, delete, insert_change, update_head, notify) =
                tokio::try_join!(
                    client.prepare("SELECT revision FROM blue_authz_head WHERE id = 1 FOR UPDATE"),
                    client.prepare(
                        "SELECT revision, (extract(epoch FROM committed_at) * 1000)::bigint, batch
                     FROM blue_authz_changes WHERE revision > $1 ORDER BY revision"
                    ),
                    client.prepare(
                        "INSERT INTO blue_authz_entities (uid, json)
                     SELECT * FROM unnest($1::text[], $2::text[])
                     ON CONFLICT (uid) DO UPDATE SET json = EXCLUDED.json"
                    ),
                    client.prepare("DELETE FROM blue_authz_entities WHERE uid = ANY($1::text[])"),
                    client.prepare(
                        "INSERT INTO blue_authz_changes (revision, batch)
                     SELECT * FROM unnest($1::bigint[], $2::text[])"
                    ),
                    client.prepare("UPDATE blue_authz_head SET revision = $1 WHERE id = 1"),
                    client.prepare(&notify_text),
                )?;
            Ok::<_, tokio_postgres::Error>(Statements {
                select_head,
                batches_after,
                upsert,
                delete,
                insert_change,
                update_head,
                notify,
            })
        };
        let statements = self.timed(prepared).await?;
        Ok(WriterConn { client, statements })
    }

    /// Starts a write: takes the head row's lock (every other writer, on any replica, waits
    /// until this one commits or rolls back) and reads the head revision.
    pub async fn begin_write(&self) -> Result<WriteTxn, SourceError> {
        let mut guard = self.writer.clone().lock_owned().await;
        if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            *guard = Some(self.writer_conn().await?);
        }
        let conn = guard.as_ref().expect("connected above");
        // One round trip: BEGIN and the locking read, pipelined.
        let began = async {
            let (_, row) = tokio::try_join!(
                conn.client.batch_execute("BEGIN"),
                conn.client.query_one(&conn.statements.select_head, &[]),
            )?;
            Ok::<_, tokio_postgres::Error>(row)
        };
        match self.timed(began).await {
            Ok(row) => Ok(WriteTxn {
                head: row.get::<_, i64>(0) as u64,
                guard,
                open: true,
                name: self.name.clone(),
            }),
            Err(e) => {
                // A half-begun transaction: drop the connection (the server rolls it back).
                *guard = None;
                Err(e)
            }
        }
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
    batches_after: Statement,
    upsert: Statement,
    delete: Statement,
    insert_change: Statement,
    update_head: Statement,
    notify: Statement,
}

/// A writer connection.
struct WriterConn {
    client: Client,
    statements: Statements,
}

/// An open write transaction holding the head row's lock. Dropped without
/// [`WriteTxn::commit`], it is rolled back (its connection is closed).
pub struct WriteTxn {
    head: u64,
    guard: OwnedMutexGuard<Option<WriterConn>>,
    open: bool,
    name: String,
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

    /// The batches after `after` up to the head, in order (what this replica has not yet
    /// applied).
    pub async fn batches_after(&mut self, after: u64) -> Result<Vec<ChangeSet>, SourceError> {
        let conn = self.conn();
        let rows = tokio::time::timeout(
            CALL_TIMEOUT,
            conn.client
                .query(&conn.statements.batches_after, &[&(after as i64)]),
        )
        .await;
        let rows = match rows {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => return Err(self.fail(e.to_string())),
            Err(_) => return Err(self.fail("no answer in time")),
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let revision = row.get::<_, i64>(0) as u64;
            let at = row.get::<_, Option<i64>>(1).unwrap_or(0).max(0) as u64;
            out.push(decode(&self.name, revision, at, row.get(2))?);
        }
        if out.first().is_some_and(|b| b.revision != after + 1)
            || (out.is_empty() && after < self.head)
        {
            return Err(self.fail(format!(
                "the change log no longer holds the batches after revision {after} (pruned)"
            )));
        }
        Ok(out)
    }

    /// Writes the batches (consecutive revisions from `head + 1`) in this one transaction,
    /// records each in the log as its own revision, prunes the log to `keep` batches (0: no
    /// count limit) and commits. Returns only after the commit.
    pub async fn commit(mut self, batches: &[&ChangeSet], keep: u64) -> Result<(), SourceError> {
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
            match encode(b) {
                Ok(t) => texts.push(t),
                Err(e) => return Err(self.fail(format!("cannot encode the batch: {e}"))),
            }
        }
        let revisions: Vec<i64> = batches.iter().map(|b| b.revision as i64).collect();
        let revision = last.revision as i64;
        // Each entity's state after the last batch (one row each: an upsert may not touch a
        // row twice).
        let mut last_state: HashMap<&str, Option<&[u8]>> = HashMap::new();
        let mut order = Vec::new();
        for b in batches {
            let puts = b.puts.iter().map(|(u, j)| (u.as_str(), Some(j.as_slice())));
            let deletes = b.deletes.iter().map(|u| (u.as_str(), None));
            for (uid, json) in puts.chain(deletes) {
                if last_state.insert(uid, json).is_none() {
                    order.push(uid);
                }
            }
        }
        let (mut uids, mut jsons, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
        for uid in order {
            match last_state[uid] {
                Some(json) => {
                    uids.push(uid);
                    jsons.push(std::str::from_utf8(json).unwrap_or("null"));
                }
                None => deletes.push(uid),
            }
        }
        let conn = self.conn();
        let (client, st) = (&conn.client, &conn.statements);
        let work = async {
            // One round trip for the statements (pipelined), each checked before the commit:
            // an aborted transaction's COMMIT reports success as a rollback.
            let upserts = async {
                if uids.is_empty() {
                    Ok(0)
                } else {
                    client.execute(&st.upsert, &[&uids, &jsons]).await
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
            let change_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                [&revisions, &texts];
            let head_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&revision];
            tokio::try_join!(
                upserts,
                removals,
                client.execute(&st.insert_change, &change_params),
                client.execute(&st.update_head, &head_params),
                pruned,
                client.execute(&st.notify, &[]),
            )?;
            client.batch_execute("COMMIT").await
        };
        match tokio::time::timeout(CALL_TIMEOUT, work).await {
            Ok(Ok(())) => {
                self.open = false;
                Ok(())
            }
            Ok(Err(e)) => Err(self.fail(e.to_string())),
            Err(_) => Err(self.fail("no answer in time; the batch was not acknowledged")),
        }
    }

    /// Ends the transaction without writing.
    pub async fn rollback(mut self) {
        let ok = matches!(
            tokio::time::timeout(CALL_TIMEOUT, self.conn().client.batch_execute("ROLLBACK")).await,
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

fn encode(changes: &ChangeSet) -> Result<String, serde_json::Error> {
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
        schema: changes.schema.as_deref(),
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
        revision,
        puts: batch
            .puts
            .into_iter()
            .map(|(uid, json)| (uid, json.get().as_bytes().to_vec()))
            .collect(),
        deletes: batch.deletes,
        schema: batch.schema,
        source: None,
        committed_at_unix_ms: at,
    })
}
