//! The policy author's console in a real browser: Debian's chromium, headless, driven through
//! chromedriver (WebDriver) against a server on a real socket. The matrix's cells equal
//! `blue-authz matrix`'s, with and without an overlay; a deny is explained; an uploaded draft
//! shows its diff and its impact on the live store; a draft that does not parse shows its
//! errors at line and column; a huge draft is refused; nothing answers without the token.
//! Screenshots go to `target/console-*.png` (the README's are copies of them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::common;
use crate::common::http::Http;
use blue_authz::engine::pack::PackSpec;
use blue_authz::service::server::{self, Limits, Running};

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver and chromium, or None (a loud skip) where they are missing outside CI.
fn driver() -> Option<Driver> {
    let found = |p: &str| Path::new(p).is_file();
    if !(found("/usr/bin/chromedriver") && found("/usr/bin/chromium")) {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium and chromedriver are needed in CI (apt-get install chromium chromium-driver)"
        );
        eprintln!("SKIPPED: the console's browser tests need chromium and chromium-driver");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::until_blocking("chromedriver listening", Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Some(Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1500,1100"],
        }),
    );
    // chromedriver speaks plain HTTP on loopback: no TLS connector needed.
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap()
}

async fn start(dir: &Path) -> Running {
    let mut c = common::config(dir, Limits::default());
    c.pack = PackSpec::new(common::pack(), &[]);
    c.console_listen = Some("127.0.0.1:0".parse().unwrap());
    let mut running = server::start(c).await.unwrap();
    running.load().await.unwrap();
    running
}

/// Waits until `f` gives Some, polling the page ([`common::until_async`]).
async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let mut found = None;
    common::until_async(what, Duration::from_secs(60), async || {
        found = f().await;
        found.is_some()
    })
    .await;
    found.expect("the condition held")
}

async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn type_into(c: &Client, css: &str, keys: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .send_keys(keys)
        .await
        .unwrap();
}

/// Waits until the element's text is not empty, and returns it.
async fn wait_text(c: &Client, what: &str, css: &str) -> String {
    until(what, async || {
        let t = text(c, css).await;
        (!t.is_empty()).then_some(t)
    })
    .await
}

/// The marks of every matrix row as the page shows them: (table, action and note) → the
/// allowed flags, column by column.
async fn page_cells(c: &Client) -> BTreeMap<(usize, String), Vec<bool>> {
    let cells: Value = c
        .execute(
            "return [...document.querySelectorAll('td.cell')].map(td => [
                Number(td.closest('table').dataset.table),
                td.dataset.action + (td.dataset.note ? ' (' + td.dataset.note + ')' : ''),
                td.dataset.allowed === 'true']);",
            vec![],
        )
        .await
        .unwrap();
    let mut out: BTreeMap<(usize, String), Vec<bool>> = BTreeMap::new();
    for cell in cells.as_array().unwrap() {
        let key = (
            cell[0].as_u64().unwrap() as usize,
            cell[1].as_str().unwrap().to_string(),
        );
        out.entry(key).or_default().push(cell[2].as_bool().unwrap());
    }
    out
}

/// The same from `blue-authz matrix`'s Markdown: each table's rows, ✅ or ❌ per column.
fn cli_cells(overlays: &[&str]) -> BTreeMap<(usize, String), Vec<bool>> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blue-authz"));
    cmd.arg("--policies").arg(common::pack());
    for o in overlays {
        cmd.args(["--overlay", o]);
    }
    let out = cmd.arg("matrix").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut table = None::<usize>;
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("## ") {
            table = Some(table.map_or(0, |t| t + 1));
            continue;
        }
        if !line.starts_with("| `") {
            continue;
        }
        let cols: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let action = cols[0].replacen('`', "", 2);
        let marks: Vec<bool> = cols
            .iter()
            .filter(|c| **c == "✅" || **c == "❌")
            .map(|c| *c == "✅")
            .collect();
        rows.insert((table.unwrap(), action), marks);
    }
    rows
}

async fn save_screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let dir = common::root().join("target");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

/// The wiki edit of the README (clients may edit it), as a file to upload.
fn wiki_draft(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(common::pack().join("project.cedar")).unwrap();
    let old = "action == Blue::Action::\"editWiki\",\n  resource is Blue::Project\n)\nwhen { principal in resource.member };";
    assert!(text.contains(old));
    let path = dir.join("upload").join("project.cedar");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        text.replace(old, &old.replace("resource.member", "resource.client")),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let Some(driver) = driver() else { return };
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let base = format!("http://{}", running.console_addr.unwrap());

    // Without the token: no data, and the page is a login form.
    let mut h = Http::connect(running.console_addr.unwrap(), false).await;
    for path in ["/console/api/meta", "/console/api/matrix"] {
        let a = h.send("GET", path, &[], "").await;
        assert_eq!(a.status, 401, "{path}: {}", a.body);
    }
    let a = h
        .send(
            "GET",
            "/console/api/meta",
            &[("authorization", "Bearer wrong")],
            "",
        )
        .await;
    assert_eq!(a.status, 401);

    let c = browser(&driver).await;
    c.goto(&format!("{base}/console")).await.unwrap();
    assert!(text(&c, "body").await.contains("Data token"));
    assert!(c.find(Locator::Css("#matrix-tables")).await.is_err());
    type_into(&c, "#token", "wrong").await;
    click(&c, "#login").await;
    until("the wrong token refused", async || {
        text(&c, "#problem")
            .await
            .contains("wrong token")
            .then_some(())
    })
    .await;
    type_into(&c, "#token", common::TOKEN).await;
    click(&c, "#login").await;

    // The matrix: every cell as `blue-authz matrix` has it.
    until("the matrix", async || {
        let ready = c.find(Locator::Css("#matrix-status[data-ready='']")).await;
        ready.is_ok().then_some(())
    })
    .await;
    let shown = page_cells(&c).await;
    assert!(shown.len() > 30, "{} rows", shown.len());
    assert_eq!(shown, cli_cells(&[]));
    // A cell links to its policies.
    click(&c, "td.cell[data-action='editWiki'][data-column='member']").await;
    let policy = wait_text(
        &c,
        "the cell's policy",
        "#cell-policies pre.policy[data-policy='project.editWiki']",
    )
    .await;
    assert!(policy.contains("principal in resource.member"), "{policy}");
    save_screenshot(&c, "console-matrix.png").await;
    // An overlay switched on.
    click(&c, "input.overlay[value='clients-read-only']").await;
    until("the matrix with the overlay", async || {
        let ready = c
            .find(Locator::Css(
                "#matrix-status[data-ready='clients-read-only']",
            ))
            .await;
        ready.is_ok().then_some(())
    })
    .await;
    let with_overlay = page_cells(&c).await;
    assert_eq!(with_overlay, cli_cells(&["clients-read-only"]));
    assert_ne!(with_overlay, shown);

    // A deny explained.
    click(&c, "#tab-explain").await;
    c.execute(
        "document.getElementById('action').value = 'editWiki';
         document.getElementById('action').dispatchEvent(new Event('change'));",
        vec![],
    )
    .await
    .unwrap();
    type_into(&c, "#principal-id", "vic").await;
    type_into(&c, "#resource-id", "apollo").await;
    click(&c, "#explain-button").await;
    let decision = wait_text(&c, "the decision", "#decision").await;
    assert_eq!(decision, "DENY");
    let words = text(&c, "#explanation li[data-policy='project.editWiki'] .words").await;
    assert_eq!(
        words,
        "`principal` (Blue::User::\"vic\") is not in `resource.member` (Blue::Role::\"apollo/member\")"
    );
    let source = text(
        &c,
        "#explain-policies pre.policy.unmet[data-policy='project.editWiki']",
    )
    .await;
    assert!(source.contains("@id(\"project.editWiki\")"), "{source}");

    // A draft uploaded: its diff and its impact on the live store.
    click(&c, "#tab-draft").await;
    let upload = wiki_draft(dir.path());
    type_into(&c, "#draft-upload", upload.to_str().unwrap()).await;
    until("the upload read", async || {
        let v = c
            .find(Locator::Css("#draft-text"))
            .await
            .ok()?
            .prop("value")
            .await
            .ok()??;
        v.contains("resource.client };").then_some(())
    })
    .await;
    assert_eq!(
        c.find(Locator::Css("#draft-file"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some("project.cedar")
    );
    click(&c, "#draft-check").await;
    let gained = wait_text(&c, "the draft's impact", "#impact-gained").await;
    // The frozen fixture: cleo, apollo's client, gains editWiki; the suites say otherwise.
    assert_eq!(gained, "1");
    assert_eq!(text(&c, "#impact-lost").await, "0");
    let row = text(&c, "#impact-actions tr[data-action='editWiki']").await;
    assert!(row.contains("editWiki"), "{row}");
    let sample = text(&c, "#impact-sample").await;
    assert!(
        sample.contains("Blue::User::\"cleo\" on Blue::Project::\"apollo\""),
        "{sample}"
    );
    let status = text(&c, "#draft-status").await;
    assert_eq!(status, "the gate would refuse it");
    assert!(text(&c, "#draft-suites").await.contains("1 failed"));
    let diff = text(&c, "#draft-diff").await;
    if common::solver_or_skip("console draft diff") {
        assert!(diff.contains("editWiki"), "{diff}");
    } else {
        assert!(diff.contains("no semantic diff"), "{diff}");
    }
    c.execute(
        "document.getElementById('draft-diff').scrollIntoView();",
        vec![],
    )
    .await
    .unwrap();
    save_screenshot(&c, "console-impact.png").await;

    // A whole candidate directory on the server's machine: the same impact.
    let candidate = dir.path().join("candidate");
    common::copy_dir(&common::pack(), &candidate);
    std::fs::copy(&upload, candidate.join("project.cedar")).unwrap();
    c.execute(
        "document.getElementById('impact-gained').textContent = '';
         document.getElementById('draft-dir').value = arguments[0];",
        vec![json!(candidate.to_str().unwrap())],
    )
    .await
    .unwrap();
    click(&c, "#draft-check-dir").await;
    let gained = wait_text(&c, "the directory's impact", "#impact-gained").await;
    assert_eq!(gained, "1");
    c.execute(
        "document.getElementById('draft-dir').value = 'policies';",
        vec![],
    )
    .await
    .unwrap();
    click(&c, "#draft-check-dir").await;
    let refused = until("a relative directory refused", async || {
        let t = text(&c, "#draft-status").await;
        t.starts_with("dir:").then_some(t)
    })
    .await;
    assert_eq!(
        refused,
        "dir: must be the absolute path of a directory on the server"
    );

    // A draft that does not parse: its errors at line and column.
    let broken = std::fs::read_to_string(&upload).unwrap().replacen(
        "when { principal in resource.admin };",
        "when { principal in resource.admin }",
        1,
    );
    c.execute(
        "document.getElementById('draft-text').value = arguments[0];",
        vec![json!(broken)],
    )
    .await
    .unwrap();
    click(&c, "#draft-check").await;
    let errors = wait_text(&c, "the draft's errors", "#draft-errors").await;
    assert!(
        errors.contains("project.cedar:14:1: unexpected token"),
        "{errors}"
    );

    // A huge draft: refused with the limit named.
    c.execute(
        "document.getElementById('draft-text').value = 'x'.repeat(1100000);",
        vec![],
    )
    .await
    .unwrap();
    click(&c, "#draft-check").await;
    let refused = until("the huge draft refused", async || {
        let t = text(&c, "#draft-status").await;
        t.contains("limit").then_some(t)
    })
    .await;
    assert!(
        refused.contains("larger than the console's limit of 1048576 bytes"),
        "{refused}"
    );
    c.close().await.unwrap();
    drop(driver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_does_not_start_without_the_data_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = common::config(dir.path(), Limits::default());
    c.pack = PackSpec::new(common::pack(), &[]);
    c.console_listen = Some("127.0.0.1:0".parse().unwrap());
    c.data_token = None;
    let e = server::start(c).await.err().expect("a refusal");
    assert!(
        e.to_string()
            .contains("--console-listen: the console needs the data token"),
        "{e}"
    );
}
