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
use crate::service::state::{State, StateError};
use crate::service::telemetry::Telemetry;

/// The most entities one `ExportEntities` chunk may hold (a chunk is one message, held in
/// memory whole).
pub const MAX_EXPORT_CHUNK: usize = 10_000;

/// The `EntityStore` data service. Reached only through its own listener, behind the token
/// interceptor ([`bearer_auth`]).
pub struct EntityStoreService {
    engine: Arc<State>,
    telemetry: Arc<Telemetry>,
}

impl EntityStoreService {
    pub fn new(engine: Arc<State>, telemetry: Arc<Telemetry>) -> Self {
        EntityStoreService { engine, telemetry }
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
