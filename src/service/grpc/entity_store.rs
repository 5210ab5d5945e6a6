//! The `EntityStore` data service: atomic write batches, export in chunks, and the revision.
//! Reached only through its own listener, behind the token interceptor ([`bearer_auth`]).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use prost::Message;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use sha2::Digest;

use super::pb::entity_store_server::EntityStore as EntityStoreRpc;
use super::{check_size, pb, ServiceError};
use crate::engine::error::RequestError;
use crate::engine::index::WriteOp;
use crate::engine::json::json_uid;
use crate::engine::pace::Pacer;
use crate::service::bearer::bearer_matches;
use crate::service::state::{Conditions, Precondition, State, StateError, Write};
use crate::service::telemetry::Telemetry;
use crate::service::write::{DataPath, DataSlot, WriteError};
use crate::storage::{ChangeSet, WriteKey, ABANDONED};

/// The most entities one `ExportEntities` chunk may hold (a chunk is one message, held in
/// memory whole).
pub const MAX_EXPORT_CHUNK: usize = 10_000;

/// The `EntityStore` data service. Reached only through its own listener, behind the token
/// interceptor ([`bearer_auth`]).
pub struct EntityStoreService {
    engine: Arc<State>,
    telemetry: Arc<Telemetry>,
    /// The node's data path, once start-up has chosen it.
    data: DataSlot,
}

/// The longest an idempotency key may be.
const MAX_KEY_BYTES: usize = 256;

impl EntityStoreService {
    pub fn new(engine: Arc<State>, telemetry: Arc<Telemetry>, data: DataSlot) -> Self {
        EntityStoreService {
            engine,
            telemetry,
            data,
        }
    }

    fn data(&self) -> Result<Arc<dyn DataPath>, Status> {
        self.data
            .get()
            .cloned()
            .ok_or_else(|| ServiceError::from(StateError::NotReady).into())
    }

    async fn write(
        &self,
        request: pb::WriteEntitiesRequest,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<pb::WriteEntitiesResponse, Status> {
        // The caller's deadline, never longer than the server's maximum, from the call's
        // arrival: a write not committed by then is never committed.
        let max = self.engine.limits.max_write_wait;
        let deadline = Instant::now() + super::deadline(metadata).map_or(max, |d| d.min(max));
        let max_bytes = self.engine.limits.max_message_bytes;
        let max_ops = self.engine.limits.max_write_ops;
        // A large batch is read (JSON parsed, key hashed) and then dropped on a blocking
        // thread: on the runtime's workers it would hold up the decisions queued behind it.
        let (ops, conditions, key) = if request.ops.len() <= INLINE_OPS {
            read_write(&request, max_bytes, max_ops)?
        } else {
            tokio::task::spawn_blocking(move || read_write(&request, max_bytes, max_ops))
                .await
                .map_err(|e| ServiceError::from(WriteError::Internal(e.to_string())))??
        };
        let data = self.data()?;
        let written = data
            .write(Write {
                ops,
                deadline,
                conditions,
                key,
            })
            .await
            .map_err(ServiceError::from)?;
        Ok(pb::WriteEntitiesResponse {
            revision: written.revision,
            replayed: written.replayed,
        })
    }
}

/// Batches of up to this many operations are read on the runtime's worker.
const INLINE_OPS: usize = 64;

/// A write request read: its size and number of operations checked, its operations parsed,
/// its conditions and its idempotency key.
fn read_write(
    request: &pb::WriteEntitiesRequest,
    max_bytes: usize,
    max_ops: usize,
) -> Result<(Vec<WriteOp>, Conditions, Option<WriteKey>), ServiceError> {
    check_size(max_bytes, request.encoded_len())?;
    if request.ops.len() > max_ops {
        return Err(RequestError::edge(
            "ops",
            format!(
                "{} operations exceed the limit of {max_ops} per batch",
                request.ops.len()
            ),
        )
        .into());
    }
    let mut pacer = Pacer::new();
    let ops = request
        .ops
        .iter()
        .enumerate()
        .map(|(i, op)| {
            pacer.tick();
            write_op(i, op)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let conditions = Conditions {
        expected_revision: request.expected_revision,
        entities: request
            .preconditions
            .iter()
            .enumerate()
            .map(|(i, p)| precondition(i, p))
            .collect::<Result<_, _>>()?,
    };
    let key = write_key(request)?;
    Ok((ops, conditions, key))
}

/// Refuses an idempotency key that is empty or too long.
fn check_key(key: &str) -> Result<(), RequestError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(RequestError::edge(
            "idempotency_key",
            format!("must be 1 to {MAX_KEY_BYTES} bytes, not {}", key.len()),
        ));
    }
    Ok(())
}

/// The idempotency key of a write, with the fingerprint of its operations and conditions
/// (each field hashed length-delimited, so no two requests share one by accident).
fn write_key(request: &pb::WriteEntitiesRequest) -> Result<Option<WriteKey>, RequestError> {
    let key = &request.idempotency_key;
    if key.is_empty() {
        return Ok(None);
    }
    check_key(key)?;
    let mut hash = sha2::Sha256::new();
    let mut buf = Vec::new();
    let mut add = |m: &dyn Fn(&mut Vec<u8>)| {
        buf.clear();
        m(&mut buf);
        hash.update(&buf);
    };
    add(&|b| b.extend_from_slice(&(request.ops.len() as u64).to_be_bytes()));
    for op in &request.ops {
        add(&|b| op.encode_length_delimited(b).expect("a Vec grows"));
    }
    add(&|b| b.extend_from_slice(&[u8::from(request.expected_revision.is_some())]));
    add(&|b| b.extend_from_slice(&request.expected_revision.unwrap_or(0).to_be_bytes()));
    add(&|b| b.extend_from_slice(&(request.preconditions.len() as u64).to_be_bytes()));
    for p in &request.preconditions {
        add(&|b| p.encode_length_delimited(b).expect("a Vec grows"));
    }
    let fingerprint = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Some(WriteKey {
        key: key.clone(),
        fingerprint,
    }))
}

fn precondition(i: usize, p: &pb::EntityPrecondition) -> Result<Precondition, RequestError> {
    use pb::entity_precondition::Expect;
    let field = format!("preconditions[{i}]");
    let uid = cedar_uid(&p.uid, &format!("{field}.uid"))?;
    let last_changed_at = match p.expect {
        Some(Expect::LastChangedAt(r)) => Some(r),
        Some(Expect::Absent(true)) => None,
        Some(Expect::Absent(false)) | None => {
            return Err(RequestError::edge(
                field,
                "names no expectation (last_changed_at, or absent: true)",
            ))
        }
    };
    Ok(Precondition {
        uid: uid.to_string(),
        last_changed_at,
    })
}

/// Checks `authorization: Bearer <token>` in constant time (the scheme in any case, as RFC
/// 7235 says; more than one `authorization` header is refused).
pub fn bearer_auth(
    token: String,
    telemetry: Arc<Telemetry>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |req: Request<()>| {
        let mut given = req.metadata().get_all("authorization").iter();
        match (given.next(), given.next()) {
            (Some(v), None) if bearer_matches(v.as_bytes(), token.as_bytes()) => Ok(req),
            _ => {
                telemetry.refused("data");
                Err(ServiceError::Unauthenticated.into())
            }
        }
    }
}

fn cedar_uid(
    v: &Option<pb::EntityUid>,
    field: &str,
) -> Result<cedar_policy::EntityUid, RequestError> {
    let u = v
        .as_ref()
        .ok_or_else(|| RequestError::edge(field, "is required"))?;
    let u = crate::engine::request::UidRef {
        ty: &u.r#type,
        id: &u.id,
    };
    let value = serde_json::json!({"type": u.ty, "id": u.id});
    json_uid(Some(&value))
        .ok_or_else(|| RequestError::edge(field, format!("`{}` is not a Cedar type name", u.ty)))
}

fn write_op(i: usize, op: &pb::WriteOp) -> Result<WriteOp, RequestError> {
    use pb::write_op::Op;
    let field = format!("ops[{i}]");
    let edge = |e: &pb::Edge, kind: &str| -> Result<_, RequestError> {
        Ok((
            cedar_uid(&e.child, &format!("{field}.{kind}.child"))?,
            cedar_uid(&e.parent, &format!("{field}.{kind}.parent"))?,
        ))
    };
    match &op.op {
        None => Err(RequestError::edge(field, "names no operation")),
        Some(Op::UpsertJson(text)) => {
            serde_json::from_str(text)
                .map(WriteOp::Upsert)
                .map_err(|e| {
                    RequestError::edge(format!("{field}.upsert_json"), format!("invalid JSON: {e}"))
                })
        }
        Some(Op::Delete(u)) => Ok(WriteOp::Delete(cedar_uid(
            &Some(u.clone()),
            &format!("{field}.delete"),
        )?)),
        Some(Op::DeleteOwned(u)) => Ok(WriteOp::DeleteOwned(cedar_uid(
            &Some(u.clone()),
            &format!("{field}.delete_owned"),
        )?)),
        Some(Op::AddParent(e)) => {
            let (child, parent) = edge(e, "add_parent")?;
            Ok(WriteOp::AddParent { child, parent })
        }
        Some(Op::RemoveParent(e)) => {
            let (child, parent) = edge(e, "remove_parent")?;
            Ok(WriteOp::RemoveParent { child, parent })
        }
    }
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportEntitiesChunk, Status>> + Send>>;
type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::ChangeBatch, Status>> + Send>>;

/// A batch of the log as `WatchChanges` sends it.
fn change_batch(set: ChangeSet) -> pb::ChangeBatch {
    let b = &set.changes;
    let mut upserts =
        Vec::with_capacity(b.puts.iter().map(|(_, j)| j.len() + 1).sum::<usize>() + 2);
    upserts.push(b'[');
    for (i, (_, json)) in b.puts.iter().enumerate() {
        if i > 0 {
            upserts.push(b',');
        }
        upserts.extend_from_slice(json);
    }
    upserts.push(b']');
    pb::ChangeBatch {
        revision: b.revision,
        committed_at_unix_ms: set.committed_at_unix_ms,
        upserts_json: String::from_utf8_lossy(&upserts).into_owned(),
        deletes: b
            .deletes
            .iter()
            .filter_map(|u| u.parse::<cedar_policy::EntityUid>().ok())
            .map(|u| pb::EntityUid {
                r#type: u.type_name().to_string(),
                id: u.id().unescaped().to_string(),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl EntityStoreRpc for EntityStoreService {
    async fn write_entities(
        &self,
        request: Request<pb::WriteEntitiesRequest>,
    ) -> Result<Response<pb::WriteEntitiesResponse>, Status> {
        let started = Instant::now();
        let (metadata, _, request) = request.into_parts();
        let result = self.write(request, &metadata).await;
        let code = result.as_ref().err().map(Status::code);
        self.telemetry.finish("WriteEntities", started, code);
        Ok(Response::new(result?))
    }

    async fn get_write(
        &self,
        request: Request<pb::GetWriteRequest>,
    ) -> Result<Response<pb::GetWriteResponse>, Status> {
        let key = &request.get_ref().idempotency_key;
        check_key(key).map_err(ServiceError::from)?;
        let found = self
            .data()?
            .keyed_write(key, request.get_ref().abandon)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(match found {
            Some((_, fingerprint)) if fingerprint == ABANDONED => pb::GetWriteResponse {
                abandoned: true,
                ..Default::default()
            },
            Some((revision, _)) => pb::GetWriteResponse {
                committed: true,
                revision,
                abandoned: false,
            },
            None => pb::GetWriteResponse::default(),
        }))
    }

    async fn read_entities(
        &self,
        request: Request<pb::ReadEntitiesRequest>,
    ) -> Result<Response<pb::ReadEntitiesResponse>, Status> {
        let uids = request
            .get_ref()
            .uids
            .iter()
            .enumerate()
            .map(|(i, u)| cedar_uid(&Some(u.clone()), &format!("uids[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ServiceError::from)?;
        let (found, found_uids, missing, revision) = {
            let live = self
                .engine
                .live()
                .ok_or(ServiceError::from(StateError::NotReady))?;
            let store = live.store();
            let mut found = Vec::new();
            let mut found_uids = Vec::new();
            let mut missing = Vec::new();
            for (u, given) in uids.iter().zip(&request.get_ref().uids) {
                match store.get_json(u) {
                    Some(json) => {
                        found.push(json.clone());
                        found_uids.push(u.to_string());
                    }
                    None => missing.push(given.clone()),
                }
            }
            (found, found_uids, missing, store.revision())
        };
        let engine = self.engine.clone();
        let changed = tokio::task::spawn_blocking(move || {
            let uids: Vec<&str> = found_uids.iter().map(String::as_str).collect();
            engine.last_changes(&uids)
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "read task failed");
            Status::internal("internal error")
        })?
        .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ReadEntitiesResponse {
            entities_json: serde_json::Value::Array(found).to_string(),
            missing,
            revision,
            // An entity written after the index was read: its newest change, at most `revision`
            // behind what the durable copy says.
            revisions: changed.into_iter().map(|r| r.unwrap_or(0)).collect(),
        }))
    }

    type WatchChangesStream = WatchStream;

    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let from = request.get_ref().from_revision;
        let mut changes = self.data()?.watch(from).await.map_err(ServiceError::from)?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(next) = changes.recv().await {
                let item = next
                    .map(change_batch)
                    .map_err(|e| ServiceError::from(e).into());
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_data_status(
        &self,
        _request: Request<pb::GetDataStatusRequest>,
    ) -> Result<Response<pb::DataStatus>, Status> {
        let view = self.data()?.view();
        Ok(Response::new(pb::DataStatus {
            source: view.source.into(),
            revision: view.revision,
            source_revision: view.source_revision,
            source_reachable: view.reachable,
            ms_since_source_answered: view.since_answered.map(|d| d.as_millis() as u64),
            last_error: view.last_error,
            last_error_at_unix_ms: view.last_error_at_unix_ms,
            writable: view.writable,
        }))
    }

    type ExportEntitiesStream = ExportStream;

    async fn export_entities(
        &self,
        request: Request<pb::ExportEntitiesRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        let chunk = match request.get_ref().chunk_size {
            0 => 1000,
            n if n as usize > MAX_EXPORT_CHUNK => {
                return Err(ServiceError::from(RequestError::edge(
                    "chunk_size",
                    format!("{n} exceeds the maximum of {MAX_EXPORT_CHUNK} entities per chunk"),
                ))
                .into())
            }
            n => n as usize,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let result = engine.export(chunk, &mut |revision, items| {
                let mut text = Vec::with_capacity(items.iter().map(Vec::len).sum::<usize>() + 2);
                text.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        text.push(b',');
                    }
                    text.extend_from_slice(item);
                }
                text.push(b']');
                let chunk = pb::ExportEntitiesChunk {
                    entities_json: String::from_utf8_lossy(&text).into_owned(),
                    revision,
                };
                tx.blocking_send(Ok(chunk)).is_ok()
            });
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(ServiceError::from(e).into()));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
