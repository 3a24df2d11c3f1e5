//! A real nginx (Debian package `nginx`) as a Jitsi node's web front, on a free loopback port.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{closed_port, eventually};

/// An nginx process; stopped when dropped.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// A front like docker-jitsi-meet's web container (`web/rootfs/defaults/meet.conf`):
    /// `location = /http-bind` and `location = /xmpp-websocket` proxied to the prosody at
    /// `signalling`, no `/about/health` location, and every other path answered 200 with a room
    /// page (as docker-jitsi-meet's rewrite to the room page does with `ENABLE_SUBDOMAINS`).
    pub async fn jitsi_front(signalling: SocketAddr) -> Nginx {
        Nginx::start(&format!(
            "location = /http-bind {{ proxy_pass http://{signalling}/http-bind; }}\n\
             location = /xmpp-websocket {{\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Upgrade $http_upgrade;\n\
               proxy_set_header Connection $connection_upgrade;\n\
               proxy_pass http://{signalling}/xmpp-websocket;\n\
             }}\n\
             location / {{ default_type text/html; return 200 \"<html><body>room page</body></html>\\n\"; }}\n"
        ))
        .await
    }

    /// The plain-HTTP port of a docker-jitsi-meet web container with `ENABLE_HTTP_REDIRECT=1`
    /// (`web/rootfs/defaults/default`): every request is sent to HTTPS.
    pub async fn redirecting_to_https() -> Nginx {
        Nginx::start("location / { return 301 https://$host$request_uri; }\n").await
    }

    /// An nginx whose one `server` has these directives besides its `listen`.
    async fn start(server: &str) -> Nginx {
        let dir = tempfile::Builder::new()
            .prefix("jitsi-router-nginx-")
            .tempdir()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
        let p = dir.path().display();
        let conf = format!(
            "master_process off; pid {p}/nginx.pid; error_log {p}/error.log; daemon off;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {p}/body; proxy_temp_path {p}/proxy;\n\
               fastcgi_temp_path {p}/fastcgi; uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;\n\
               map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
               server {{\n\
                 listen {addr};\n\
                 {server}\
               }}\n\
             }}\n"
        );
        let config = dir.path().join("nginx.conf");
        std::fs::write(&config, conf).unwrap();
        // One process (no master): killing it stops nginx whole.
        let child = Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("nginx: {e}: run the README's test command, which installs it")
            });
        let nginx = Nginx { child, addr, dir };
        let client = (reqwest::Client::builder().no_proxy())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let page = nginx.url() + "/";
        eventually(Duration::from_secs(10), "nginx to answer", || async {
            client.get(&page).send().await.is_ok()
        })
        .await;
        nginx
    }

    /// `http://<address>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// nginx's error log, for failure messages.
    pub fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
