//! One row of a pack's permission table as a claim about its policies: the shape the
//! authoring room builds from `matrix.toml` and the analysis room proves, here so neither
//! room reaches the other.

use cedar_policy::{EntityTypeName, EntityUid, PolicySet};

/// One row of a pack's permission table (`matrix.toml`), as what the analysis proves of it for
/// all data the store can hold. Built and validated by the authoring room from `matrix.toml`,
/// proved by the analysis room.
#[derive(Debug, Clone)]
pub struct TableClaim {
    /// How a failure names it: `table `..`, row `deleteRecord (any record)``.
    pub row: String,
    /// The columns the row allows.
    pub allowed: Vec<String>,
    pub principal_type: EntityTypeName,
    pub action: EntityUid,
    pub resource_type: EntityTypeName,
    /// `permit (..) when { !(given) || <an allowed column's condition> || .. }`: every ALLOW
    /// of the pack implies it.
    pub at_most: PolicySet,
    /// Per allowed column, `permit (..) when { (given) && (its condition) }`: it implies an
    /// ALLOW of the pack.
    pub at_least: Vec<(String, PolicySet)>,
}
