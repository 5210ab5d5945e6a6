//! The `Policies` service: which policy set is live, why the last candidate was rejected,
//! and a candidate previewed against the live one (behind the data token).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb;
use super::ServiceError;
use crate::engine::error::RequestError;
use crate::service::bearer::bearer_matches;
use crate::service::gate::Analysis;
use crate::service::preview::{self, Draft, Preview};
use crate::service::reload::{ImpactSummary, Reloader};
use crate::service::state::State;

/// Changed pairs a preview returns per action and direction, by default and at most.
const DEFAULT_SAMPLE: u32 = 5;
const MAX_SAMPLE: u32 = 1000;

pub struct PoliciesService {
    reloader: Arc<Reloader>,
    engine: Arc<State>,
    analysis: Analysis,
    /// The data token, which a preview needs (None: previews are refused).
    token: Option<String>,
}

impl PoliciesService {
    pub fn new(
        reloader: Arc<Reloader>,
        engine: Arc<State>,
        analysis: Analysis,
        token: Option<String>,
    ) -> Self {
        PoliciesService {
            reloader,
            engine,
            analysis,
            token,
        }
    }
}

/// The counts of an impact as the proto says them.
fn reload_impact(i: ImpactSummary) -> pb::ReloadImpact {
    pb::ReloadImpact {
        from_version: i.from_version,
        to_version: i.to_version,
        gained: i.gained as u64,
        lost: i.lost as u64,
        revision: i.revision,
        elapsed_ms: i.elapsed_ms,
        actions: i
            .actions
            .into_iter()
            .map(|(action, resource_type, gained, lost)| pb::ActionImpact {
                action,
                resource_type,
                gained: gained as u64,
                lost: lost as u64,
            })
            .collect(),
        skipped: i.skipped,
        truncated: i.truncated,
    }
}

fn preview_response(p: Preview, sample: usize, live_version: &str) -> pb::PreviewPoliciesResponse {
    let c = match p {
        Preview::Invalid(problems) => {
            return pb::PreviewPoliciesResponse {
                problems: problems
                    .iter()
                    .map(|p| match p.file.as_str() {
                        "" => p.message.clone(),
                        f => format!("{f}:{}:{}: {}", p.line, p.col, p.message),
                    })
                    .collect(),
                ..Default::default()
            }
        }
        Preview::Checked(c) => c,
    };
    let (diff, diff_skipped) = match c.diff {
        Ok((lines, _)) => (lines, String::new()),
        Err(e) => (Vec::new(), e),
    };
    let (impact, impact_skipped, pairs) = match c.impact {
        Ok(i) => {
            let mut pairs = Vec::new();
            for a in &i.actions {
                let context_json = a
                    .context
                    .as_ref()
                    .map(|m| serde_json::Value::Object(m.clone()).to_string())
                    .unwrap_or_default();
                for (gained, list) in [(true, &a.gained), (false, &a.lost)] {
                    for p in list.iter().take(sample) {
                        pairs.push(pb::ImpactPair {
                            action: a.action.clone(),
                            gained,
                            principal: p.principal.clone(),
                            resource: p.resource.clone(),
                            before: p.before.clone(),
                            after: p.after.clone(),
                            context_json: context_json.clone(),
                        });
                    }
                }
            }
            let summary = ImpactSummary::of(live_version, &c.version, &i);
            (Some(reload_impact(summary)), String::new(), pairs)
        }
        Err(e) => (None, e, Vec::new()),
    };
    pb::PreviewPoliciesResponse {
        problems: Vec::new(),
        candidate_version: c.version,
        accepted: c.accepted,
        reasons: c.reasons,
        analysis: c.analysis,
        diff,
        diff_skipped,
        impact,
        impact_skipped,
        pairs,
    }
}

#[tonic::async_trait]
impl pb::policies_server::Policies for PoliciesService {
    async fn preview_policies(
        &self,
        request: Request<pb::PreviewPoliciesRequest>,
    ) -> Result<Response<pb::PreviewPoliciesResponse>, Status> {
        self.preview(request).await
    }

    async fn get_policy_status(
        &self,
        _request: Request<pb::GetPolicyStatusRequest>,
    ) -> Result<Response<pb::PolicyStatus>, Status> {
        let s = self.reloader.status();
        Ok(Response::new(pb::PolicyStatus {
            live_version: s.live_version,
            live_files: s.live_files,
            live_overlays: s.live_overlays,
            live_policies: s.live_policies as u32,
            live_since_unix_ms: s.live_since_unix_ms,
            reloads_accepted: s.accepted,
            reloads_rejected: s.rejected,
            reloads_unchanged: s.unchanged,
            last_rejection: s.last_rejection.map(|r| pb::PolicyRejection {
                at_unix_ms: r.at_unix_ms,
                candidate_version: r.candidate_version.unwrap_or_default(),
                reasons: r.reasons,
                problems: r.problems as u32,
            }),
            live_analysis: s.live_analysis,
            last_impact: s.last_impact.map(reload_impact),
        }))
    }
}

impl PoliciesService {
    /// `PreviewPolicies`, off the runtime's workers (it runs suites, proofs and a comparison).
    pub(super) async fn preview(
        &self,
        request: Request<pb::PreviewPoliciesRequest>,
    ) -> Result<Response<pb::PreviewPoliciesResponse>, Status> {
        let token_ok = self.token.as_ref().is_some_and(|t| {
            let mut given = request.metadata().get_all("authorization").iter();
            matches!(
                (given.next(), given.next()),
                (Some(v), None) if bearer_matches(v.as_bytes(), t.as_bytes())
            )
        });
        if !token_ok {
            return Err(ServiceError::Unauthenticated.into());
        }
        let req = request.into_inner();
        if req.sample > MAX_SAMPLE {
            let e = RequestError::edge(
                "sample",
                format!("{} is more than the maximum of {MAX_SAMPLE}", req.sample),
            );
            return Err(ServiceError::from(e).into());
        }
        let sample = match req.sample {
            0 => DEFAULT_SAMPLE,
            n => n,
        } as usize;
        if !req.dir.is_empty() && !req.files.is_empty() {
            let e = RequestError::edge("dir", "give a directory or files, not both");
            return Err(ServiceError::from(e).into());
        }
        let (engine, analysis) = (self.engine.clone(), self.analysis);
        let answer = tokio::task::spawn_blocking(move || {
            let files: std::collections::BTreeMap<String, String> = req.files.into_iter().collect();
            let draft = if req.dir.is_empty() {
                Draft::Files(&files)
            } else {
                Draft::Dir(&req.dir)
            };
            let live = engine.pack().map(|p| p.version.clone()).unwrap_or_default();
            preview::preview(&engine, analysis, draft).map(|p| preview_response(p, sample, &live))
        })
        .await
        .map_err(|_| Status::internal("internal error"))?;
        match answer {
            Ok(r) => Ok(Response::new(r)),
            Err(e) => Err(ServiceError::from(e).into()),
        }
    }
}
