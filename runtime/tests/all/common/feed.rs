//! A TUF feed made with `certconn release` and served over HTTP on loopback, for the tests of
//! updates (updates.rs) and of the package's self-update under its unit (deb_package.rs).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http_body_util::{Full, StreamBody};
use hyper::body::{Bytes, Frame};

use super::{binary, ok};

/// A feed workspace made with `certconn release`, served over HTTP on a loopback port the test
/// bound itself.
pub struct Feed {
    pub dir: PathBuf,
    pub keys: PathBuf,
    pub port: u16,
    /// Paths answered with an endless body.
    pub endless: Arc<Mutex<HashSet<String>>>,
    /// Served instead of the repository, when set (an attacker's copy).
    pub served: Arc<Mutex<PathBuf>>,
}

pub fn release(args: &[&str]) -> String {
    ok(std::process::Command::new(binary())
        .arg("release")
        .args(args)
        .output()
        .expect("certconn release"))
}

impl Feed {
    pub async fn new(dir: &Path, init: &[&str]) -> Feed {
        let ws = dir.join("feed");
        let keys = dir.join("feed-keys");
        let mut args = vec![
            "init",
            ws.to_str().unwrap(),
            "--keys",
            keys.to_str().unwrap(),
        ];
        args.extend_from_slice(init);
        release(&args);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let endless: Arc<Mutex<HashSet<String>>> = Arc::default();
        let served = Arc::new(Mutex::new(ws.join("repository")));
        let (e, s) = (endless.clone(), served.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (e, s) = (e.clone(), s.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (e, s) = (e.clone(), s.clone());
                            async move { Ok::<_, std::convert::Infallible>(serve_file(&req, &e, &s)) }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Feed {
            dir: ws,
            keys,
            port,
            endless,
            served,
        }
    }

    pub fn add(&self, kind: &str, name: &str, version: &str, released: &str, file: &Path) {
        release(&[
            "add",
            self.dir.to_str().unwrap(),
            "--kind",
            kind,
            "--name",
            name,
            "--version",
            version,
            "--released",
            released,
            file.to_str().unwrap(),
        ]);
    }

    /// [`Feed::add`] without `certconn release add`'s check that the file is what the release
    /// says: a release only an attacker or a broken build would put in a feed.
    pub fn add_unchecked(
        &self,
        kind: &str,
        name: &str,
        version: &str,
        released: &str,
        file: &Path,
    ) {
        use certconn::update::release::{Kind, Release};
        let release = Release {
            kind: if kind == "daemon" {
                Kind::Daemon
            } else {
                Kind::Plugin
            },
            name: name.into(),
            version: version.into(),
            channel: "stable".into(),
            released: released.into(),
            support_days: certconn::update::release::DEFAULT_SUPPORT_DAYS,
        };
        certconn::update::publish::Workspace::new(&self.dir, PathBuf::new())
            .add(&release, &std::fs::read(file).expect("the release's file"))
            .expect("the release is added");
    }

    pub fn publish(&self) {
        release(&[
            "publish",
            self.dir.to_str().unwrap(),
            "--keys",
            self.keys.to_str().unwrap(),
        ]);
    }

    pub fn metadata(&self) -> PathBuf {
        self.dir.join("repository/metadata")
    }

    /// `[update]` for this feed; the daemon looks only when asked unless `extra` sets
    /// `check_seconds`.
    pub fn section(&self, extra: &str) -> String {
        let every = if extra.contains("check_seconds") {
            ""
        } else {
            "check_seconds = 3600\n"
        };
        format!(
            "[update]\nurl = \"http://127.0.0.1:{}/\"\nroot = \"{}\"\n{every}{extra}\n",
            self.port,
            self.metadata().join("1.root.json").display()
        )
    }
}

type Body = http_body_util::Either<
    Full<Bytes>,
    StreamBody<
        futures::stream::Iter<
            std::iter::RepeatWith<fn() -> Result<Frame<Bytes>, std::convert::Infallible>>,
        >,
    >,
>;

fn endless_chunk() -> Result<Frame<Bytes>, std::convert::Infallible> {
    Ok(Frame::data(Bytes::from_static(&[b' '; 16384])))
}

fn serve_file(
    req: &hyper::Request<hyper::body::Incoming>,
    endless: &Mutex<HashSet<String>>,
    served: &Mutex<PathBuf>,
) -> hyper::Response<Body> {
    let path = req.uri().path().trim_start_matches('/').to_owned();
    if endless.lock().unwrap().contains(&path) {
        let f: fn() -> Result<Frame<Bytes>, std::convert::Infallible> = endless_chunk;
        let stream = futures::stream::iter(std::iter::repeat_with(f));
        return hyper::Response::new(http_body_util::Either::Right(StreamBody::new(stream)));
    }
    let root = served.lock().unwrap().clone();
    match (!path.contains(".."))
        .then(|| std::fs::read(root.join(&path)))
        .and_then(Result::ok)
    {
        Some(bytes) => {
            hyper::Response::new(http_body_util::Either::Left(Full::new(Bytes::from(bytes))))
        }
        None => {
            let mut r = hyper::Response::new(http_body_util::Either::Left(Full::new(Bytes::new())));
            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
            r
        }
    }
}
