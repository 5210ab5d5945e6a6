//! `routes.toml`: how HTTP requests map to Cedar requests, for a proxy that asks before it
//! forwards (Envoy's ext_authz). Declared by the pack, checked against the schema when it loads
//! (each problem at file:line:col), and matched here on plain strings: the edge that speaks
//! Envoy's protocol hands in the method, the path, a header lookup and the JWT claims.
//!
//! - `[principal]`: its `type`, and where its id comes from: a `header` the authenticating
//!   proxy sets, or a `claim` of the JWT payload that Envoy's `jwt_authn` filter puts in the
//!   request's metadata.
//! - `[[route]]`: `method` (or `"*"`), `path` (a template: `/projects/{project}/wiki`; `{name}`
//!   matches one segment), `action`, `resource` (a type) and `id` (the path parameter that
//!   names the resource), and optional `context` members taken from a `query` parameter or a
//!   `header`, typed by the schema (a Long or Bool attribute is parsed, an entity attribute
//!   takes the value as the id of an entity of its type).
//! - `[[public]]`: requests that need no decision (`path` may end in `/*` for a whole prefix).
//!
//! A request that matches no route is not decided at all: the edge denies it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::diagnostics::{parse_toml, toml_error};
use super::shapes::{Kind, Shapes};
use crate::engine::error::LoadError;

/// The file in the policy directory.
pub const ROUTES_FILE: &str = "routes.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    principal: toml::Spanned<PrincipalFile>,
    #[serde(default)]
    route: Vec<toml::Spanned<RouteFile>>,
    #[serde(default)]
    public: Vec<toml::Spanned<PublicFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalFile {
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    claim: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    method: String,
    path: String,
    action: String,
    resource: String,
    id: String,
    #[serde(default)]
    context: BTreeMap<String, SourceFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceFile {
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicFile {
    method: String,
    path: String,
}

/// Where the principal's id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalFrom {
    /// A request header (lowercase).
    Header(String),
    /// A claim of the JWT payload in the request's metadata.
    Claim(String),
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Literal(String),
    Param(String),
    /// `*` at the end: the rest of the path (public routes).
    Rest,
}

/// Where a context member's value comes from, and how it is typed.
#[derive(Debug, Clone)]
struct ContextSource {
    name: String,
    query: Option<String>,
    header: Option<String>,
    kind: Kind,
}

#[derive(Debug, Clone)]
struct Route {
    method: String,
    segments: Vec<Segment>,
    /// The template as written, and `METHOD /template` for logs.
    path: String,
    name: String,
    action: String,
    resource: String,
    id: String,
    context: Vec<ContextSource>,
}

/// A pack's routes.
#[derive(Debug, Clone)]
pub struct Routes {
    pub principal_type: String,
    pub principal_from: PrincipalFrom,
    routes: Vec<Route>,
    public: Vec<(String, Vec<Segment>)>,
}

/// What an HTTP request maps to.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped<'r> {
    /// A route that needs no decision.
    Public,
    /// A Cedar request: the principal's id (None: the request does not carry it), the
    /// action, the resource, and the context.
    Decide {
        route: &'r str,
        principal: Option<String>,
        action: &'r str,
        resource_type: &'r str,
        resource_id: String,
        context: serde_json::Map<String, serde_json::Value>,
    },
    /// A route matched, but a value it takes is unusable (a context value that is not of the
    /// schema's type): the reason.
    Invalid(String),
    /// No route matches.
    NoRoute,
}

impl Routes {
    /// Maps a request. `header` looks a header up by its lowercase name; `claims` is the JWT
    /// payload, if the proxy put one in the metadata.
    pub fn map(
        &self,
        method: &str,
        path_and_query: &str,
        header: &dyn Fn(&str) -> Option<String>,
        claims: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Mapped<'_> {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let segments: Vec<std::borrow::Cow<'_, str>> = path
            .split('/')
            .skip(1)
            .map(|s| match s.contains('%') {
                false => std::borrow::Cow::Borrowed(s),
                true => std::borrow::Cow::Owned(percent_decode(s).unwrap_or_else(|| s.to_string())),
            })
            .collect();
        let method_matches = |m: &str| m == "*" || m.eq_ignore_ascii_case(method);
        for (m, template) in &self.public {
            if method_matches(m) && fits(template, &segments) {
                return Mapped::Public;
            }
        }
        let Some(route) = self
            .routes
            .iter()
            .find(|r| method_matches(&r.method) && fits(&r.segments, &segments))
        else {
            return Mapped::NoRoute;
        };
        let principal = match &self.principal_from {
            PrincipalFrom::Header(h) => header(h).filter(|v| !v.is_empty()),
            PrincipalFrom::Claim(c) => claims
                .and_then(|m| m.get(c))
                .and_then(|v| v.as_str())
                .filter(|v| !v.is_empty())
                .map(String::from),
        };
        let mut context = serde_json::Map::new();
        for c in &route.context {
            let raw = match (&c.query, &c.header) {
                (Some(q), _) => query_param(query, q),
                (_, Some(h)) => header(h),
                _ => None,
            };
            let Some(raw) = raw else { continue };
            let value = match c.kind {
                Kind::Long => match raw.parse::<i64>() {
                    Ok(n) => serde_json::Value::from(n),
                    Err(_) => {
                        return Mapped::Invalid(format!("context.{} `{raw}` is not a Long", c.name))
                    }
                },
                Kind::Bool => match raw.as_str() {
                    "true" => serde_json::Value::Bool(true),
                    "false" => serde_json::Value::Bool(false),
                    _ => {
                        return Mapped::Invalid(format!(
                            "context.{} `{raw}` is not true or false",
                            c.name
                        ))
                    }
                },
                Kind::Entity(ref ty) => serde_json::json!({"__entity": {"type": ty, "id": raw}}),
                _ => serde_json::Value::String(raw),
            };
            context.insert(c.name.clone(), value);
        }
        Mapped::Decide {
            route: &route.name,
            principal,
            action: &route.action,
            resource_type: &route.resource,
            resource_id: param(&route.segments, &segments, &route.id)
                .unwrap_or_default()
                .to_string(),
            context,
        }
    }

    /// Every route as `(method, template, action, resource type, id parameter)`, in file order.
    pub fn list(&self) -> Vec<(&str, &str, &str, &str, &str)> {
        self.routes
            .iter()
            .map(|r| {
                (
                    r.method.as_str(),
                    r.path.as_str(),
                    r.action.as_str(),
                    r.resource.as_str(),
                    r.id.as_str(),
                )
            })
            .collect()
    }
}

/// Whether `segments` fit the template (no allocation: a check tries every route in turn).
fn fits<S: AsRef<str>>(template: &[Segment], segments: &[S]) -> bool {
    for (i, t) in template.iter().enumerate() {
        let seg = segments.get(i).map(AsRef::as_ref);
        match t {
            Segment::Rest => return true,
            Segment::Literal(l) if seg != Some(l.as_str()) => return false,
            Segment::Param(_) if seg.is_none_or(str::is_empty) => return false,
            _ => {}
        }
    }
    segments.len() == template.len()
}

/// The value of path parameter `name` in segments that fit the template.
fn param<'s, S: AsRef<str>>(
    template: &[Segment],
    segments: &'s [S],
    name: &str,
) -> Option<&'s str> {
    template
        .iter()
        .position(|t| matches!(t, Segment::Param(p) if p == name))
        .and_then(|i| segments.get(i))
        .map(AsRef::as_ref)
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(&k.replace('+', " "))?;
        (k == name).then(|| percent_decode(&v.replace('+', " ")).unwrap_or_default())
    })
}

/// `%XX` decoded, as UTF-8; None if it is not.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn template(path: &str, public: bool) -> Result<Vec<Segment>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("path `{path}` does not start with `/`"));
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if *p == "*" {
            if !public || i + 1 != parts.len() {
                return Err(format!(
                    "path `{path}`: `*` is only for the last segment of a public route"
                ));
            }
            out.push(Segment::Rest);
        } else if let Some(name) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if name.is_empty() || out.contains(&Segment::Param(name.to_string())) {
                return Err(format!(
                    "path `{path}`: parameter `{{{name}}}` is empty or repeated"
                ));
            }
            out.push(Segment::Param(name.to_string()));
        } else if p.contains(['{', '}', '*', '?']) {
            return Err(format!(
                "path `{path}`: segment `{p}` is not a literal or `{{name}}`"
            ));
        } else {
            out.push(Segment::Literal(p.to_string()));
        }
    }
    Ok(out)
}

fn method_ok(m: &str) -> bool {
    m == "*" || (!m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()))
}

/// The principal and resource types an action applies to, by name.
pub(super) type Applies = (Vec<String>, Vec<String>);

/// What checking routes needs from the pack.
pub(super) struct Schema<'a> {
    pub is_entity_type: &'a dyn Fn(&str) -> bool,
    /// The principal and resource types an action (by id) applies to; None: no such action.
    pub applies: &'a dyn Fn(&str) -> Option<Applies>,
    pub shapes: &'a Shapes,
}

/// Reads and checks `routes.toml` if the pack has one. Returns the routes and the file's text
/// (for the pack's version).
pub(super) fn load(
    dir: &Path,
    schema: &Schema<'_>,
) -> Result<(Option<Routes>, Option<String>), LoadError> {
    let path = dir.join(ROUTES_FILE);
    if !path.is_file() {
        return Ok((None, None));
    }
    let text = super::files::read(&path)?;
    let at = |offset: usize, message: String| toml_error(&path, &text, offset, message);
    let file: RoutesFile = parse_toml(&path, &text)?;
    let mut diags = Vec::new();
    let p = file.principal.get_ref();
    let principal_from = match (&p.header, &p.claim) {
        (Some(h), None) if !h.is_empty() => PrincipalFrom::Header(h.to_ascii_lowercase()),
        (None, Some(c)) if !c.is_empty() => PrincipalFrom::Claim(c.clone()),
        _ => {
            diags.push(at(
                file.principal.span().start,
                "[principal] takes exactly one of `header` and `claim`".into(),
            ));
            PrincipalFrom::Header(String::new())
        }
    };
    if !(schema.is_entity_type)(&p.ty) {
        diags.push(at(
            file.principal.span().start,
            format!("`{}` is not an entity type of the schema", p.ty),
        ));
    }
    let mut routes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for r in &file.route {
        let start = r.span().start;
        let route = r.get_ref();
        let mut bad = |m: String| diags.push(at(start, m));
        if !method_ok(&route.method) {
            bad(format!(
                "method `{}` is not an HTTP method (uppercase) or `*`",
                route.method
            ));
        }
        let segments = match template(&route.path, false) {
            Ok(s) => s,
            Err(m) => {
                bad(m);
                continue;
            }
        };
        if !seen.insert((route.method.clone(), segments.clone())) {
            bad(format!(
                "route `{} {}` is declared twice",
                route.method, route.path
            ));
        }
        if !segments.contains(&Segment::Param(route.id.clone())) {
            bad(format!(
                "id `{}` is not a parameter of the path `{}`",
                route.id, route.path
            ));
        }
        match (schema.applies)(&route.action) {
            None => bad(format!(
                "`{}` is not an action id of the schema",
                route.action
            )),
            Some((principals, resources)) => {
                if !resources.contains(&route.resource) {
                    bad(format!(
                        "action `{}` does not apply to resources of type `{}`",
                        route.action, route.resource
                    ));
                }
                if !principals.contains(&p.ty) {
                    bad(format!(
                        "action `{}` does not apply to principals of type `{}`",
                        route.action, p.ty
                    ));
                }
            }
        }
        let mut context = Vec::new();
        let shape = schema.shapes.contexts.get(&route.action);
        for (name, source) in &route.context {
            let kind = shape.and_then(|s| s.kind(name)).map(|(k, _)| k.clone());
            match (kind, &source.query, &source.header) {
                (None, _, _) => bad(format!(
                    "context `{name}` is not in the context of `{}`",
                    route.action
                )),
                (Some(Kind::String | Kind::Long | Kind::Bool | Kind::Entity(_)), q, h)
                    if q.is_some() != h.is_some() =>
                {
                    context.push(ContextSource {
                        name: name.clone(),
                        query: q.clone(),
                        header: h.as_ref().map(|h| h.to_ascii_lowercase()),
                        kind: shape
                            .and_then(|s| s.kind(name))
                            .map(|(k, _)| k.clone())
                            .unwrap_or(Kind::String),
                    })
                }
                (Some(Kind::String | Kind::Long | Kind::Bool | Kind::Entity(_)), _, _) => bad(format!(
                    "context `{name}` takes exactly one of `query` and `header`"
                )),
                (Some(_), _, _) => bad(format!(
                    "context `{name}` is not a String, Long, Bool or entity: a request cannot carry it"
                )),
            }
        }
        routes.push(Route {
            name: format!("{} {}", route.method, route.path),
            method: route.method.clone(),
            segments,
            path: route.path.clone(),
            action: route.action.clone(),
            resource: route.resource.clone(),
            id: route.id.clone(),
            context,
        });
    }
    let mut public = Vec::new();
    for r in &file.public {
        let start = r.span().start;
        let p = r.get_ref();
        if !method_ok(&p.method) {
            diags.push(at(
                start,
                format!("method `{}` is not an HTTP method or `*`", p.method),
            ));
        }
        match template(&p.path, true) {
            Ok(s) => public.push((p.method.clone(), s)),
            Err(m) => diags.push(at(start, m)),
        }
    }
    if !diags.is_empty() {
        return Err(LoadError::Invalid(diags));
    }
    Ok((
        Some(Routes {
            principal_type: p.ty.clone(),
            principal_from,
            routes,
            public,
        }),
        Some(text),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_segments_and_decode_them() {
        let t = template("/projects/{project}/wiki", false).unwrap();
        let segs = |p: &str| -> Vec<String> {
            p.split('/')
                .skip(1)
                .map(|s| percent_decode(s).unwrap())
                .collect()
        };
        let site = segs("/projects/web%20site/wiki");
        assert!(fits(&t, &site));
        assert_eq!(param(&t, &site, "project"), Some("web site"));
        assert_eq!(param(&t, &site, "wiki"), None);
        assert!(!fits(&t, &segs("/projects//wiki")));
        assert!(!fits(&t, &segs("/projects/a/wiki/x")));
        assert!(!fits(&t, &segs("/projects/a")));
        let rest = template("/static/*", true).unwrap();
        assert!(fits(&rest, &segs("/static/a/b.css")));
        assert!(template("/a/*", false).is_err());
        assert!(template("/a/{x}/{x}", false).is_err());
        assert!(template("a", false).is_err());
        assert_eq!(
            query_param("a=1&role=ad%6Din&x", "role").as_deref(),
            Some("admin")
        );
        assert_eq!(query_param("a=1", "role"), None);
    }

    fn routes(principal_from: PrincipalFrom) -> Routes {
        Routes {
            principal_type: "N::U".into(),
            principal_from,
            routes: vec![Route {
                method: "GET".into(),
                segments: template("/docs/{doc}", false).unwrap(),
                path: "/docs/{doc}".into(),
                name: "GET /docs/{doc}".into(),
                action: "read".into(),
                resource: "N::D".into(),
                id: "doc".into(),
                context: vec![ContextSource {
                    name: "n".into(),
                    query: Some("n".into()),
                    header: None,
                    kind: Kind::Long,
                }],
            }],
            public: vec![("*".into(), template("/static/*", true).unwrap())],
        }
    }

    #[test]
    fn requests_map_to_principals_from_headers_or_claims_and_typed_context() {
        let none = |_: &str| None;
        let by_header = routes(PrincipalFrom::Header("x-user-id".into()));
        let header = |h: &str| (h == "x-user-id").then(|| "ada".to_string());
        let Mapped::Decide {
            principal,
            resource_id,
            context,
            ..
        } = by_header.map("GET", "/docs/a%20b?n=7", &header, None)
        else {
            panic!("not decided")
        };
        assert_eq!(principal.as_deref(), Some("ada"));
        assert_eq!(resource_id, "a b");
        assert_eq!(context["n"], serde_json::json!(7));
        // A value the schema's type refuses; no principal; no route; a public prefix.
        assert!(matches!(
            by_header.map("GET", "/docs/a?n=seven", &header, None),
            Mapped::Invalid(why) if why.contains("context.n")
        ));
        assert!(matches!(
            by_header.map("GET", "/docs/a", &none, None),
            Mapped::Decide {
                principal: None,
                ..
            }
        ));
        assert_eq!(
            by_header.map("POST", "/docs/a", &header, None),
            Mapped::NoRoute
        );
        assert_eq!(
            by_header.map("PUT", "/static/x/y.css", &none, None),
            Mapped::Public
        );
        // From the JWT payload's claim.
        let by_claim = routes(PrincipalFrom::Claim("sub".into()));
        let claims = serde_json::json!({"sub": "bob", "email": "b@x"});
        assert!(matches!(
            by_claim.map("GET", "/docs/a", &header, claims.as_object()),
            Mapped::Decide { principal: Some(p), .. } if p == "bob"
        ));
        assert!(matches!(
            by_claim.map("GET", "/docs/a", &header, None),
            Mapped::Decide {
                principal: None,
                ..
            }
        ));
    }
}
