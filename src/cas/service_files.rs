//! Service definitions in files: a directory with one file per service, TOML (`*.toml`) or JSON (`*.json`),
//! beside the config's `[[services]]`. Other files (editor backups, `README`) are ignored. Read at start, again on
//! SIGHUP, and whenever a file in it changes (the directory is polled: no inotify, so it works on network and
//! container mounts alike). A bad file fails the whole reload with its path, key and reason, and the registry in
//! force stays as it was: services never half-change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::services::{RegisteredService, ServiceDefinition, ServiceRegistry};

/// Why services could not be loaded; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: {detail}")]
    Parse { file: String, detail: String },
    #[error("{file}: {key}: {reason} (got {value:?})")]
    Invalid { file: String, key: String, value: String, reason: String },
}

/// Where the services come from.
#[derive(Clone, Debug)]
pub struct ServiceSource {
    /// The config file's name and its `[[services]]`.
    pub config_file: String,
    pub inline: Vec<ServiceDefinition>,
    pub dir: Option<PathBuf>,
    pub max_url_bytes: usize,
    /// `tickets.st_ttl`: no service's tickets may live longer.
    pub max_st_ttl: Duration,
    /// The themes a service may name.
    pub themes: Vec<String>,
}

impl ServiceSource {
    /// Reads and compiles every service; the first problem found, naming its file and key.
    pub fn load(&self) -> Result<ServiceRegistry, ServiceError> {
        let mut defs: Vec<(String, String, ServiceDefinition)> = self
            .inline
            .iter()
            .enumerate()
            .map(|(i, d)| (self.config_file.clone(), format!("services[{i}]."), d.clone()))
            .collect();
        if let Some(dir) = &self.dir {
            for path in service_files(dir)? {
                let file = path.display().to_string();
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| ServiceError::Read { file: file.clone(), source })?;
                let def: ServiceDefinition = if path.extension().is_some_and(|e| e == "json") {
                    serde_json::from_str(&text)
                        .map_err(|e| ServiceError::Parse { file: file.clone(), detail: e.to_string() })?
                } else {
                    toml::from_str(&text)
                        .map_err(|e| ServiceError::Parse { file: file.clone(), detail: e.to_string() })?
                };
                defs.push((file, String::new(), def));
            }
        }
        let mut ids: HashMap<u32, String> = HashMap::new();
        let mut compiled = Vec::with_capacity(defs.len());
        for (file, prefix, def) in &defs {
            let invalid = |key: &str, value: String, reason: String| ServiceError::Invalid {
                file: file.clone(),
                key: format!("{prefix}{key}"),
                value,
                reason,
            };
            if let Some(other) = ids.insert(def.id, file.clone()) {
                return Err(invalid("id", def.id.to_string(), format!("is used by another service (in {other})")));
            }
            if def.name.trim().is_empty() {
                return Err(invalid("name", def.name.clone(), "must not be empty".into()));
            }
            if let Some(ttl) = def.st_ttl
                && (ttl.is_zero() || ttl > self.max_st_ttl)
            {
                let reason = format!(
                    "must be more than zero and at most tickets.st_ttl ({})",
                    humantime::format_duration(self.max_st_ttl)
                );
                return Err(invalid("st_ttl", humantime::format_duration(ttl).to_string(), reason));
            }
            if let Some(theme) = &def.theme
                && !self.themes.contains(theme)
            {
                return Err(invalid("theme", theme.clone(), "no such theme folder in ui.themes_dir".into()));
            }
            let service = RegisteredService::compile(def)
                .map_err(|(field, pattern, e)| invalid(field, pattern, e.to_string()))?;
            compiled.push(service);
        }
        Ok(ServiceRegistry::from_compiled(compiled, self.max_url_bytes))
    }

    /// What the directory holds now, to tell a change: (name, size, modified) per service file.
    pub fn fingerprint(&self) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
        let Some(dir) = &self.dir else { return Vec::new() };
        let Ok(files) = service_files(dir) else { return Vec::new() };
        files
            .into_iter()
            .map(|p| {
                let meta = std::fs::metadata(&p).ok();
                let size = meta.as_ref().map_or(0, |m| m.len());
                let modified = meta.and_then(|m| m.modified().ok());
                (p, size, modified)
            })
            .collect()
    }
}

/// The service files of `dir`, sorted by name.
fn service_files(dir: &Path) -> Result<Vec<PathBuf>, ServiceError> {
    let read = |source| ServiceError::Read { file: dir.display().to_string(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        if path.extension().is_some_and(|e| e == "toml" || e == "json") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &Path) -> ServiceSource {
        ServiceSource {
            config_file: "casd.toml".into(),
            inline: Vec::new(),
            dir: Some(dir.to_owned()),
            max_url_bytes: 4096,
            max_st_ttl: Duration::from_secs(10),
            themes: Vec::new(),
        }
    }

    #[test]
    fn toml_and_json_files_load_and_bad_ones_name_file_and_key() {
        let dir = std::env::temp_dir().join(format!("casd-svcfiles-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("10-wiki.toml"), "id = 10\nname = \"wiki\"\npattern = 'https://wiki/.*'\norder = 5\n")
            .expect("write");
        std::fs::write(dir.join("20-mail.json"), r#"{"id": 20, "name": "mail", "pattern": "https://wiki/mail/.*"}"#)
            .expect("write");
        std::fs::write(dir.join("notes.txt"), "ignored").expect("write");
        let r = source(&dir).load().expect("loads");
        assert_eq!(r.len(), 2);
        // Order before id: the wiki's order 5 puts it after mail's 0 though its id is lower.
        assert_eq!(r.find("https://wiki/mail/x").map(|s| s.id), Some(20));

        std::fs::write(dir.join("30-bad.toml"), "id = 30\nname = \"bad\"\npattern = 'https://x/('\n").expect("write");
        let e = source(&dir).load().expect_err("bad pattern").to_string();
        assert!(e.contains("30-bad.toml") && e.contains("pattern") && e.contains("https://x/("), "{e}");
        std::fs::write(dir.join("30-bad.toml"), "id = 10\nname = \"dup\"\npattern = 'https://x/'\n").expect("write");
        let e = source(&dir).load().expect_err("duplicate id").to_string();
        assert!(e.contains("30-bad.toml") && e.contains("id") && e.contains("10-wiki.toml"), "{e}");
        std::fs::write(dir.join("30-bad.toml"), "id = 30\nname = \"x\"\npattern = 'https://x/'\nst_ttl = \"1h\"\n")
            .expect("write");
        let e = source(&dir).load().expect_err("ttl over the bound").to_string();
        assert!(e.contains("st_ttl") && e.contains("at most tickets.st_ttl"), "{e}");
        std::fs::write(dir.join("30-bad.toml"), "id = 30\nname = \"x\"\npattern = 'https://x/'\ntheme = \"blue\"\n")
            .expect("write");
        let e = source(&dir).load().expect_err("unknown theme").to_string();
        assert!(e.contains("30-bad.toml") && e.contains("theme") && e.contains("blue"), "{e}");
        std::fs::write(dir.join("30-bad.toml"), "id = 30\nname = \"x\"\npattern = 'https://x/'\ncolour = \"blue\"\n")
            .expect("write");
        let e = source(&dir).load().expect_err("unknown key").to_string();
        assert!(e.contains("30-bad.toml") && e.contains("colour"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
