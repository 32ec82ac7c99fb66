//! cgroups for the jailed VMM, v1 or v2 as the host mounts them: `<mount>/<parent>/<id>`
//! gets the `--cgroup FILE=VALUE` settings, then the jailer's pid.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::fs::Created;

/// Which cgroup hierarchy to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CgroupVersion {
    /// One hierarchy per controller (`cgroup` mounts).
    #[default]
    V1,
    /// The unified hierarchy (the `cgroup2` mount).
    V2,
}

impl std::str::FromStr for CgroupVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "1" => Ok(Self::V1),
            "2" => Ok(Self::V2),
            _ => Err(format!("--cgroup-version {s:?}: give 1 or 2")),
        }
    }
}

/// What is wrong with a cgroup setting, or what failed writing it.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Not `FILE=VALUE`, or FILE is not `<controller>.<name>`.
    #[error("--cgroup {0:?}: give FILE=VALUE with FILE like cpu.shares (no '/')")]
    Format(String),
    /// The controller is not mounted in the chosen hierarchy.
    #[error("--cgroup {setting:?}: controller {controller} is not available in cgroup v{version} on this host (see /proc/mounts)")]
    Unavailable {
        /// The setting.
        setting: String,
        /// Its controller.
        controller: String,
        /// The hierarchy asked for.
        version: u8,
    },
    /// A cgroup file could not be written.
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The cgroups to make: folder → settings, in the order given.
#[derive(Debug, Default)]
pub(super) struct Plan {
    version: Option<CgroupVersion>,
    /// For v2 the one unified folder; for v1 one folder per controller.
    groups: BTreeMap<PathBuf, Group>,
}

#[derive(Debug, Default)]
struct Group {
    /// The hierarchy's mount point (where the settings' inheritance stops).
    mount: PathBuf,
    settings: Vec<(String, String)>,
}

/// Mount points of `fstype` from /proc/mounts, with their options.
fn mounts(fstype: &str) -> Vec<(PathBuf, Vec<String>)> {
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[2] == fstype).then(|| {
                (
                    PathBuf::from(f[1]),
                    f[3].split(',').map(String::from).collect(),
                )
            })
        })
        .collect()
}

impl Plan {
    pub(super) fn new(
        version: CgroupVersion,
        settings: &[String],
        parent: &Path,
        id: &str,
    ) -> Result<Self, CgroupError> {
        let mut plan = Plan::default();
        if settings.is_empty() {
            return Ok(plan);
        }
        plan.version = Some(version);
        let v2_mount = mounts("cgroup2").into_iter().next().map(|m| m.0);
        let v2_controllers: Vec<String> = v2_mount
            .as_ref()
            .and_then(|m| std::fs::read_to_string(m.join("cgroup.controllers")).ok())
            .map(|s| s.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        let v1 = mounts("cgroup");
        for s in settings {
            let format = || CgroupError::Format(s.clone());
            let (file, value) = s.split_once('=').ok_or_else(format)?;
            let controller = file.split_once('.').map(|c| c.0).ok_or_else(format)?;
            if value.is_empty() || controller.is_empty() || file.contains('/') || file == ".." {
                return Err(format());
            }
            let unavailable = || CgroupError::Unavailable {
                setting: s.clone(),
                controller: controller.into(),
                version: if version == CgroupVersion::V1 { 1 } else { 2 },
            };
            let mount = match version {
                CgroupVersion::V1 => v1
                    .iter()
                    .find(|(_, opts)| opts.iter().any(|o| o == controller))
                    .map(|m| m.0.clone()),
                CgroupVersion::V2 => v2_mount
                    .clone()
                    .filter(|_| v2_controllers.iter().any(|c| c == controller)),
            }
            .ok_or_else(unavailable)?;
            let group = plan.groups.entry(mount.join(parent).join(id)).or_default();
            group.mount = mount;
            group.settings.push((file.into(), value.into()));
        }
        Ok(plan)
    }

    /// Makes the cgroups, writes every setting, then moves this process into them.
    pub(super) fn apply(&self, created: &mut Created) -> Result<(), super::JailError> {
        let Some(version) = self.version else {
            return Ok(());
        };
        for (dir, group) in &self.groups {
            let mut missing: Vec<PathBuf> = dir
                .ancestors()
                .take_while(|a| !a.exists())
                .map(Path::to_path_buf)
                .collect();
            missing.reverse();
            for m in missing {
                std::fs::create_dir(&m)
                    .map_err(super::os_error(format!("create cgroup {}", m.display())))?;
                created.cgroups.push(m.clone());
                if version == CgroupVersion::V1 {
                    inherit_cpuset(&m)?;
                }
            }
            for (file, value) in &group.settings {
                if version == CgroupVersion::V2 {
                    enable_controller(&group.mount, dir, file)?;
                }
                write(&dir.join(file), value)?;
            }
        }
        let procs = match version {
            CgroupVersion::V1 => "tasks",
            CgroupVersion::V2 => "cgroup.procs",
        };
        for dir in self.groups.keys() {
            write(&dir.join(procs), &std::process::id().to_string())?;
        }
        Ok(())
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.into(),
        source,
    })
}

/// A new v1 cpuset starts with no CPUs or memory nodes, and takes no task until given
/// some: copy the parent's.
fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = dir.join(file);
        if !own.exists() {
            continue;
        }
        let value = std::fs::read_to_string(parent.join(file)).unwrap_or_default();
        if std::fs::read_to_string(&own)
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            write(&own, value.trim())?;
        }
    }
    Ok(())
}

/// Turns the setting's controller on in `cgroup.subtree_control` from the mount down to
/// the cgroup's parent, so the cgroup has the file.
fn enable_controller(mount: &Path, dir: &Path, file: &str) -> Result<(), CgroupError> {
    let controller = file.split('.').next().unwrap_or(file);
    let mut levels: Vec<&Path> = dir
        .ancestors()
        .skip(1)
        .take_while(|a| a.starts_with(mount))
        .collect();
    levels.reverse();
    for level in levels {
        write(
            &level.join("cgroup.subtree_control"),
            &format!("+{controller}"),
        )?;
    }
    Ok(())
}
