//! The `Policies` service: which policy set is live, and why the last candidate was rejected.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb;
use crate::service::reload::Reloader;

pub struct PoliciesService {
    reloader: Arc<Reloader>,
}

impl PoliciesService {
    pub fn new(reloader: Arc<Reloader>) -> Self {
        PoliciesService { reloader }
    }
}

#[tonic::async_trait]
impl pb::policies_server::Policies for PoliciesService {
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
            last_impact: s.last_impact.map(|i| pb::ReloadImpact {
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
            }),
        }))
    }
}
