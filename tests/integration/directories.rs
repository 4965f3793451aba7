//! Real directory and database servers for the authentication-source tests: OpenLDAP's `slapd` and PostgreSQL,
//! from their Debian packages, each in a private folder on ephemeral loopback ports, with generated data. A
//! missing server fails the test (CI installs both); nothing is skipped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::support::{KillOnDrop, TestCa, free_port};

pub const BASE: &str = "dc=example,dc=org";
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
pub const ADMIN_PW: &str = "admin-secret";
pub const SERVICE_DN: &str = "cn=casd,ou=system,dc=example,dc=org";
pub const SERVICE_PW: &str = "casd-service-pw";

fn private_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("casd-{what}-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

/// Waits until `port` on loopback accepts connections, for at most 15 s.
fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `slapd`: `ldap://` (with StartTLS) and `ldaps://` under a test CA, the `ppolicy` and `memberof`
/// overlays, and the people of [`PEOPLE`].
pub struct Slapd {
    pub dir: PathBuf,
    pub ldap_port: u16,
    pub ldaps_port: u16,
    pub ca: TestCa,
    child: Option<KillOnDrop>,
}

/// The generated people. alice: mail, cn, member of staff. bob: his policy expires passwords after 1 s. carol:
/// locked by an administrator. dave: a second `al*`-like name for the injection test (`alan`).
pub const PEOPLE: &str = "
dn: uid=alice,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: Alice Liddell
sn: Liddell
mail: alice@example.org
userPassword: alice-pw

dn: uid=bob,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: B
userPassword: bob-pw
pwdPolicySubentry: cn=expiring,ou=policies,dc=example,dc=org

dn: uid=carol,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: carol
cn: Carol
sn: C
userPassword: carol-pw
pwdAccountLockedTime: 000001010000Z

dn: uid=casadmin-twin,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: casadmin-twin
cn: Not the break-glass admin
sn: T
userPassword: twin-pw

dn: cn=staff,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: staff
member: uid=alice,ou=people,dc=example,dc=org

dn: cn=faculty,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: faculty
member: uid=alice,ou=people,dc=example,dc=org
";

const SKELETON: &str = "
dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=org
objectClass: organizationalUnit
ou: groups

dn: ou=system,dc=example,dc=org
objectClass: organizationalUnit
ou: system

dn: cn=casd,ou=system,dc=example,dc=org
objectClass: person
cn: casd
sn: service
userPassword: casd-service-pw

dn: ou=policies,dc=example,dc=org
objectClass: organizationalUnit
ou: policies

dn: cn=default,ou=policies,dc=example,dc=org
objectClass: pwdPolicy
objectClass: person
cn: default
sn: policy
pwdAttribute: userPassword
pwdLockout: TRUE
pwdMaxFailure: 0

dn: cn=expiring,ou=policies,dc=example,dc=org
objectClass: pwdPolicy
objectClass: person
cn: expiring
sn: policy
pwdAttribute: userPassword
pwdLockout: TRUE
pwdMaxFailure: 0
pwdMaxAge: 1
pwdGraceAuthNLimit: 0
";

impl Slapd {
    /// Starts slapd and loads the skeleton and [`PEOPLE`] through the running server (so the overlays see them).
    pub fn start() -> Self {
        let dir = private_dir("slapd");
        let ca = TestCa::new();
        let (cert, key) = ca.leaf_pem();
        std::fs::write(dir.join("server.pem"), cert).expect("cert");
        std::fs::write(dir.join("server.key"), key).expect("key");
        std::fs::create_dir_all(dir.join("db")).expect("db dir");
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\nmoduleload ppolicy\nmoduleload memberof\n\
             pidfile {d}/slapd.pid\n\
             TLSCACertificateFile {ca}\n\
             TLSCertificateFile {d}/server.pem\n\
             TLSCertificateKeyFile {d}/server.key\n\
             database mdb\nsuffix \"{BASE}\"\nrootdn \"{ADMIN_DN}\"\nrootpw {ADMIN_PW}\n\
             directory {d}/db\nmaxsize 67108864\n\
             overlay memberof\n\
             overlay ppolicy\nppolicy_default \"cn=default,ou=policies,{BASE}\"\nppolicy_use_lockout\n\
             access to attrs=userPassword by self write by anonymous auth by * none\n\
             access to * by * read\n",
            d = dir.display(),
            ca = ca.pem_file.display()
        );
        std::fs::write(dir.join("slapd.conf"), conf).expect("slapd.conf");
        let mut s = Self { dir, ldap_port: free_port(), ldaps_port: free_port(), ca, child: None };
        s.run();
        s.add(SKELETON);
        s.add(PEOPLE);
        s
    }

    /// (Re)starts the server process on the same ports and data.
    pub fn run(&mut self) {
        let log = self.dir.join("slapd.log");
        let child = Command::new("/usr/sbin/slapd")
            .arg("-h")
            .arg(format!("ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/", self.ldap_port, self.ldaps_port))
            .arg("-f")
            .arg(self.dir.join("slapd.conf"))
            .args(["-d", "0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("slapd must be installed (Debian package slapd; .ci/run installs it)");
        self.child = Some(KillOnDrop(child));
        wait_for_port(self.ldap_port, "slapd", &log);
        wait_for_port(self.ldaps_port, "slapd (ldaps)", &log);
    }

    /// Stops the server (the directory goes down; its data stays).
    pub fn stop(&mut self) {
        self.child = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.ldap_port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn ldap_url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.ldap_port)
    }

    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.ldaps_port)
    }

    /// `ldapadd` as the administrator.
    pub fn add(&self, ldif: &str) {
        self.ldap_tool("ldapadd", ldif);
    }

    fn ldap_tool(&self, tool: &str, ldif: &str) {
        use std::io::Write;
        let mut child = Command::new(tool)
            .args(["-x", "-H", &self.ldap_url(), "-D", ADMIN_DN, "-w", ADMIN_PW])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ldap-utils must be installed");
        child.stdin.take().expect("stdin").write_all(ldif.as_bytes()).expect("ldif");
        let out = child.wait_with_output().expect(tool);
        assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.child = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private PostgreSQL cluster (`initdb` into a temporary folder), on an ephemeral loopback port, with
/// scram-sha-256 password authentication for the role `casd`. Run as the `postgres` user when the tests run as
/// root (PostgreSQL refuses root).
pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
    pub password_file: PathBuf,
    child: Option<std::process::Child>,
}

pub const DB_PASSWORD: &str = "db-secret";

fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL must be installed (Debian package postgresql; .ci/run installs it)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    versions.last().expect("a PostgreSQL version").join("bin").join(name)
}

/// `(uid, gid)` of the `postgres` user when running as root; `None` otherwise.
fn postgres_user() -> Option<(u32, u32)> {
    if rustix::process::geteuid().as_raw() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let line = passwd.lines().find(|l| l.starts_with("postgres:")).expect("a postgres user (from the Debian package)");
    let f: Vec<&str> = line.split(':').collect();
    Some((f[2].parse().expect("uid"), f[3].parse().expect("gid")))
}

impl Postgres {
    pub fn start() -> Self {
        let dir = private_dir("pg");
        let user = postgres_user();
        let password_file = dir.join("password");
        std::fs::write(&password_file, format!("{DB_PASSWORD}\n")).expect("password file");
        if let Some((uid, gid)) = user {
            for p in [&dir, &password_file] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown");
            }
        }
        let as_user = |mut c: Command| {
            if let Some((uid, gid)) = user {
                c.uid(uid).gid(gid);
            }
            c
        };
        let mut initdb = as_user(Command::new(pg_bin("initdb")));
        initdb.arg("-D").arg(dir.join("data")).args(["-U", "casd", "-A", "scram-sha-256", "--no-sync"]);
        let out = initdb.arg(format!("--pwfile={}", password_file.display())).output().expect("initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let log = dir.join("postgres.log");
        let mut postgres = as_user(Command::new(pg_bin("postgres")));
        postgres
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .arg("-k")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"));
        let child = postgres.spawn().expect("postgres");
        wait_for_port(port, "postgres", &log);
        Self { dir, port, password_file, child: Some(child) }
    }

    pub fn url(&self) -> String {
        format!("postgresql://casd@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs SQL as `casd` through `psql`.
    pub fn psql(&self, sql: &str) {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "casd", "-d", "postgres"])
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
            .env("PGPASSWORD", DB_PASSWORD)
            .output()
            .expect("psql (Debian package postgresql-client)");
        assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stops the server with a fast shutdown (SIGINT), as an operator would, and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ =
                rustix::process::kill_process(rustix::process::Pid::from_child(&child), rustix::process::Signal::INT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
