//! The `EntityStore` data service: atomic write batches, export in chunks, and the revision.
//! Reached only through its own listener, behind the token interceptor ([`bearer_auth`]).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use prost::Message;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::pb::entity_store_server::EntityStore as EntityStoreRpc;
use super::{check_size, pb, uid, ServiceError};
use crate::engine::error::RequestError;
use crate::engine::index::WriteOp;
use crate::engine::json::json_uid;
use crate::service::bearer::constant_time_eq;
use crate::service::replica::Replica;
use crate::service::replica::ReplicaSlot;
use crate::service::state::{State, StateError};
use crate::service::telemetry::Telemetry;
use crate::storage::{ChangeSet, Poll};

/// The most entities one `ExportEntities` chunk may hold (a chunk is one message, held in
/// memory whole).
pub const MAX_EXPORT_CHUNK: usize = 10_000;

/// The `EntityStore` data service. Reached only through its own listener, behind the token
/// interceptor ([`bearer_auth`]).
pub struct EntityStoreService {
    engine: Arc<State>,
    telemetry: Arc<Telemetry>,
    /// The replica of the shared source, once started.
    replica: ReplicaSlot,
    /// Whether this node has a shared source (then it never writes only locally).
    shared: bool,
}

/// Batches one `WatchChanges` read of the log carries.
const WATCH_BATCHES: u32 = 100;

impl EntityStoreService {
    pub fn new(
        engine: Arc<State>,
        telemetry: Arc<Telemetry>,
        replica: ReplicaSlot,
        shared: bool,
    ) -> Self {
        EntityStoreService {
            engine,
            telemetry,
            replica,
            shared,
        }
    }

    fn replica(&self) -> Result<Option<Arc<Replica>>, Status> {
        match self.replica.get() {
            Some(r) => Ok(Some(r.clone())),
            None if self.shared => Err(ServiceError::from(StateError::NotReady).into()),
            None => Ok(None),
        }
    }

    async fn write(&self, request: &pb::WriteEntitiesRequest) -> Result<u64, Status> {
        check_size(self.engine.limits.max_message_bytes, request.encoded_len())?;
        let max = self.engine.limits.max_write_ops;
        if request.ops.len() > max {
            return Err(ServiceError::from(RequestError::new(
                "ops",
                format!(
                    "{} operations exceed the limit of {max} per batch",
                    request.ops.len()
                ),
            ))
            .into());
        }
        let ops = request
            .ops
            .iter()
            .enumerate()
            .map(|(i, op)| write_op(i, op))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ServiceError::from)?;
        if let Some(replica) = self.replica()? {
            return Ok(replica.write(ops).await.map_err(ServiceError::from)?);
        }
        let engine = self.engine.clone();
        Ok(tokio::task::spawn_blocking(move || engine.write(ops))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "write task failed");
                Status::internal("internal error")
            })?
            .map_err(ServiceError::from)?)
    }
}

/// Checks `authorization: Bearer <token>` in constant time.
pub fn bearer_auth(
    token: String,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    let expected = format!("Bearer {token}").into_bytes();
    move |req: Request<()>| {
        let given = req
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(given, &expected) {
            Ok(req)
        } else {
            Err(ServiceError::Unauthenticated.into())
        }
    }
}

fn cedar_uid(
    v: &Option<pb::EntityUid>,
    field: &str,
) -> Result<cedar_policy::EntityUid, RequestError> {
    let u = uid(v, field)?;
    let value = serde_json::json!({"type": u.ty, "id": u.id});
    json_uid(Some(&value))
        .ok_or_else(|| RequestError::new(field, format!("`{}` is not a Cedar type name", u.ty)))
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
        None => Err(RequestError::new(field, "names no operation")),
        Some(Op::UpsertJson(text)) => {
            serde_json::from_str(text)
                .map(WriteOp::Upsert)
                .map_err(|e| {
                    RequestError::new(format!("{field}.upsert_json"), format!("invalid JSON: {e}"))
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
fn change_batch(b: ChangeSet) -> pb::ChangeBatch {
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
        committed_at_unix_ms: b.committed_at_unix_ms,
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

fn pruned(from: u64, pruned_through: u64) -> Status {
    Status::out_of_range(format!(
        "revision {from} is older than the retained change log, which starts after revision \
         {pruned_through}: read a snapshot with ExportEntities and watch from its revision"
    ))
}

#[tonic::async_trait]
impl EntityStoreRpc for EntityStoreService {
    async fn write_entities(
        &self,
        request: Request<pb::WriteEntitiesRequest>,
    ) -> Result<Response<pb::WriteEntitiesResponse>, Status> {
        let started = Instant::now();
        let result = self.write(request.get_ref()).await;
        let code = result.as_ref().err().map(Status::code);
        self.telemetry.finish("WriteEntities", started, code);
        Ok(Response::new(pb::WriteEntitiesResponse {
            revision: result?,
        }))
    }

    async fn read_entities(
        &self,
        request: Request<pb::ReadEntitiesRequest>,
    ) -> Result<Response<pb::ReadEntitiesResponse>, Status> {
        let live = self
            .engine
            .live()
            .ok_or(ServiceError::from(StateError::NotReady))?;
        let uids = request
            .get_ref()
            .uids
            .iter()
            .enumerate()
            .map(|(i, u)| cedar_uid(&Some(u.clone()), &format!("uids[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ServiceError::from)?;
        let store = live.store();
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for (u, given) in uids.iter().zip(&request.get_ref().uids) {
            match store.get_json(u) {
                Some(json) => found.push(json.clone()),
                None => missing.push(given.clone()),
            }
        }
        Ok(Response::new(pb::ReadEntitiesResponse {
            entities_json: serde_json::Value::Array(found).to_string(),
            missing,
            revision: store.revision(),
        }))
    }

    type WatchChangesStream = WatchStream;

    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let Some(replica) = self.replica()? else {
            return Err(Status::failed_precondition(
                "this node keeps its data in its embedded database alone: WatchChanges needs a \
                 shared source (--source)",
            ));
        };
        let from = request.get_ref().from_revision;
        // Refuse a pruned position before the stream starts, so the caller gets the status.
        let first = replica
            .source
            .poll(from, WATCH_BATCHES)
            .await
            .map_err(|e| ServiceError::from(StateError::from(e)))?;
        let first = match first {
            Poll::Pruned { pruned_through, .. } => return Err(pruned(from, pruned_through)),
            Poll::Batches { batches, .. } => batches,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut revisions = self.engine.subscribe();
        tokio::spawn(async move {
            let mut cursor = from;
            let mut next = first;
            loop {
                let got = !next.is_empty();
                for b in next.drain(..) {
                    cursor = b.revision;
                    if tx.send(Ok(change_batch(b))).await.is_err() {
                        return;
                    }
                }
                if !got {
                    // Wake on this replica's next batch (it follows the same log), or poll.
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = revisions.changed() => {}
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
                match replica.source.poll(cursor, WATCH_BATCHES).await {
                    Ok(Poll::Batches { batches, .. }) => next = batches,
                    Ok(Poll::Pruned { pruned_through, .. }) => {
                        let _ = tx.send(Err(pruned(cursor, pruned_through))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Err(ServiceError::from(StateError::from(e)).into()))
                            .await;
                        return;
                    }
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
        let revision = self.engine.revision();
        let status = match self.replica()? {
            None => pb::DataStatus {
                source: "embedded".into(),
                revision,
                source_revision: revision,
                source_reachable: true,
                ms_since_source_answered: 0,
                // A local write fault (a full disk): why, and that writes fail until it clears.
                last_error: self.engine.write_fault().unwrap_or_default(),
                writable: self.engine.live().is_some() && self.engine.write_fault().is_none(),
            },
            Some(replica) => {
                let view = replica.status.view();
                pb::DataStatus {
                    source: "postgres".into(),
                    revision,
                    source_revision: view.head.max(revision),
                    source_reachable: view.reachable,
                    ms_since_source_answered: view
                        .since_answered
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(u64::MAX),
                    last_error: match self.engine.write_fault() {
                        Some(local) => local,
                        None => view.last_error,
                    },
                    writable: view.reachable && self.engine.write_fault().is_none(),
                }
            }
        };
        Ok(Response::new(status))
    }

    type ExportEntitiesStream = ExportStream;

    async fn export_entities(
        &self,
        request: Request<pb::ExportEntitiesRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        let chunk = match request.get_ref().chunk_size {
            0 => 1000,
            n if n as usize > MAX_EXPORT_CHUNK => {
                return Err(ServiceError::from(RequestError::new(
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
