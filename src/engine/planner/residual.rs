//! Compiled conditions written back as Cedar text, for people: the residual of a plan (each
//! part that does not depend on the resource replaced by its value for this request, so
//! `principal in resource.project.view` reads `Blue::User::"ada" in resource.project.view`), and
//! the expression an error names.

use cedar_policy_core::ast::BinaryOp;

use crate::engine::facts::{Ent, Lookup, V};
use crate::engine::plan::Node;

/// `n` as Cedar text; `known` gives the text of a part's value where it has one.
pub(crate) fn show(n: &Node, known: &dyn Fn(&Node) -> Option<String>) -> String {
    if let Some(s) = known(n) {
        return s;
    }
    let s = |x: &Node| show(x, known);
    match n {
        Node::Bool(b) => b.to_string(),
        Node::Long(x) => x.to_string(),
        Node::Str(x) => quoted(x),
        Node::Entity(u) => u.to_string(),
        Node::Principal => "principal".into(),
        Node::Resource => "resource".into(),
        Node::Context => "context".into(),
        Node::Set(items) => format!("[{}]", items.iter().map(s).collect::<Vec<_>>().join(", ")),
        // Scope parts that hold for every resource read better left out.
        Node::And(a, b) => match (s(a).as_str(), s(b)) {
            ("true", rb) => rb,
            (ra, rb) if rb == "true" => ra.to_string(),
            (ra, rb) => format!("({ra} && {rb})"),
        },
        Node::Or(a, b) => format!("({} || {})", s(a), s(b)),
        Node::Not(a) => format!("!{}", s(a)),
        Node::If(c, a, b) => format!("(if {} then {} else {})", s(c), s(a), s(b)),
        Node::Binary(op, a, b) => {
            let (a, b) = (s(a), s(b));
            match op {
                BinaryOp::Eq => format!("{a} == {b}"),
                BinaryOp::Less => format!("{a} < {b}"),
                BinaryOp::LessEq => format!("{a} <= {b}"),
                BinaryOp::In => format!("{a} in {b}"),
                BinaryOp::Contains => format!("{a}.contains({b})"),
                BinaryOp::ContainsAll => format!("{a}.containsAll({b})"),
                BinaryOp::ContainsAny => format!("{a}.containsAny({b})"),
                other => format!("{a} {other:?} {b}"),
            }
        }
        Node::Attr(e, a) => format!("{}.{a}", s(e)),
        Node::Has(e, a) => format!("{} has {a}", s(e)),
        Node::Is(e, t) => format!("{} is {t}", s(e)),
        Node::Like(e, p) => format!("{} like \"{p}\"", s(e)),
    }
}

/// A value as Cedar text.
pub(crate) fn value<L: Lookup>(v: &V<'_>, facts: &L) -> String {
    match v {
        V::Bool(b) => b.to_string(),
        V::Long(n) => n.to_string(),
        V::Str(s) => quoted(s),
        // As Cedar writes a uid, from the index's own text.
        V::Ent(Ent::Ix(ix)) => format!(
            "{}::\"{}\"",
            facts.type_text(*ix),
            facts.id(*ix).escape_debug()
        ),
        V::Ent(Ent::Other(u)) => u.to_string(),
        V::Set(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|i| value(i, facts))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        V::Record(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {v}", quoted(k)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.escape_debug())
}
