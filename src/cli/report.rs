//! How the CLI prints a policy diagnostic: our located line (`file:line:col: error: ...`), then
//! Cedar's own diagnostic through miette's graphical report, with every label and source span
//! against the file's text (and every related diagnostic), not only the first.

use std::fmt;

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, NamedSource};

use crate::engine::error::PolicyDiagnostic;

/// The diagnostic as the CLI prints it.
pub fn render(d: &PolicyDiagnostic) -> String {
    let (Some(cedar), Some(text)) = (&d.cedar, &d.source_text) else {
        return d.render();
    };
    let source = NamedSource::new(d.location.file.display().to_string(), text.clone());
    let inner: &dyn Diagnostic = cedar.as_ref();
    let with_source = InFile {
        inner,
        source: &source,
    };
    let mut out = d.to_string();
    out.push('\n');
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .without_cause_chain();
    if handler.render_report(&mut out, &with_source).is_err() {
        return d.render();
    }
    out.trim_end().to_string()
}

/// A Cedar diagnostic with the text its spans point into.
struct InFile<'a> {
    inner: &'a dyn Diagnostic,
    source: &'a NamedSource<String>,
}

impl fmt::Debug for InFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.inner, f)
    }
}

impl fmt::Display for InFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.inner, f)
    }
}

impl std::error::Error for InFile<'_> {}

impl Diagnostic for InFile<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.code()
    }
    fn severity(&self) -> Option<miette::Severity> {
        self.inner.severity()
    }
    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.help()
    }
    fn url<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.inner.url()
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(self.source)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        self.inner.labels()
    }
    fn related<'b>(&'b self) -> Option<Box<dyn Iterator<Item = &'b dyn Diagnostic> + 'b>> {
        self.inner.related()
    }
}

#[cfg(test)]
mod tests {
    use super::render;
    use crate::engine::error::LoadError;
    use crate::engine::pack::{PackSpec, PolicyPack};

    #[test]
    fn every_label_of_cedars_diagnostic_is_shown_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("schema.cedarschema"),
            "entity User; action view appliesTo { principal: User, resource: User };",
        )
        .unwrap();
        // Two errors in one file: an unknown attribute and a type error, in two policies.
        std::fs::write(
            dir.path().join("a.cedar"),
            "@id(\"a.one\")\npermit (principal, action, resource) when { principal.nope };\n\
             @id(\"a.two\")\npermit (principal, action, resource) when { 1 + \"x\" == 2 };\n",
        )
        .unwrap();
        let Err(LoadError::Invalid(diags)) = PolicyPack::load(&PackSpec::new(dir.path(), &[]))
        else {
            panic!("the pack must be refused");
        };
        assert!(diags.len() >= 2, "{diags:?}");
        let all: Vec<String> = diags.iter().map(render).collect();
        let text = all.join("\n");
        // Our located line, then miette's report with the file name, the line and the
        // underlined span of each error.
        assert!(text.contains("a.cedar:2:"), "{text}");
        assert!(text.contains("a.cedar:4:"), "{text}");
        assert!(text.contains("principal.nope"), "{text}");
        assert!(text.contains("1 + \"x\""), "{text}");
        assert!(text.contains('╭') || text.contains("───"), "{text}");
    }
}
