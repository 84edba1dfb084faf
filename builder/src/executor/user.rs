//! `USER` resolution against the image's own `/etc/passwd` and `/etc/group`,
//! with the rules of moby's `user.GetExecUser` (what Docker and BuildKit
//! use): a number is always an id, a name must exist; an explicit group
//! replaces the passwd group and drops the supplementary groups; otherwise
//! the user's supplementary groups are the groups that list its name.

use super::protocol::Failure;

/// Who the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ExecUser {
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// The group list for `setgroups`: the primary group first, as Docker
    /// sets it, then the supplementary groups.
    pub(super) groups: Vec<u32>,
    pub(super) home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.trim().split(':').collect();
        if f.len() < 4 || f[0].starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f.get(5).copied().unwrap_or(""),
        })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.trim().split(':').collect();
        if f.len() < 3 || f[0].starts_with('#') {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f
                .get(3)
                .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
        })
    })
}

/// Resolves `spec` (`""`, `user`, `user:group`, numbers or names) with the
/// image's passwd and group files (`None` when the image has none).
pub(super) fn resolve(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ExecUser, Failure> {
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, g),
        None => (spec, ""),
    };
    let uid_arg: Option<u32> = user_arg.parse().ok();
    let gid_arg: Option<u32> = group_arg.parse().ok();

    let mut user = ExecUser {
        uid: 0,
        gid: 0,
        groups: Vec::new(),
        home: "/".to_owned(),
    };
    let found = passwd_entries(passwd.unwrap_or("")).find(|u| {
        if user_arg.is_empty() {
            u.uid == 0
        } else if let Some(uid) = uid_arg {
            u.uid == uid
        } else {
            u.name == user_arg
        }
    });
    let mut name = None;
    match (found, uid_arg) {
        (Some(entry), _) => {
            name = Some(entry.name);
            user.uid = entry.uid;
            user.gid = entry.gid;
            user.home = entry.home.to_owned();
        }
        (None, _) if user_arg.is_empty() => {}
        (None, Some(uid)) => user.uid = uid,
        (None, None) => return Err(Failure::UserNotFound(user_arg.to_owned())),
    }

    let mut supplementary = Vec::new();
    if !group_arg.is_empty() {
        let found = group_entries(group.unwrap_or("")).find(|g| match gid_arg {
            Some(gid) => g.gid == gid,
            None => g.name == group_arg,
        });
        user.gid = match (found, gid_arg) {
            (Some(entry), _) => entry.gid,
            (None, Some(gid)) => gid,
            (None, None) => return Err(Failure::GroupNotFound(group_arg.to_owned())),
        };
    } else if let Some(name) = name {
        supplementary = group_entries(group.unwrap_or(""))
            .filter(|g| g.members.contains(&name))
            .map(|g| g.gid)
            .collect();
    }
    user.groups.push(user.gid);
    for gid in supplementary {
        if !user.groups.contains(&gid) {
            user.groups.push(gid);
        }
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          app:x:1000:1000::/home/app:/bin/sh\n\
                          nobody:x:65534:65534:nobody:/home:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:root\nstaff:x:50:app,other\napp:x:1000:\n";

    fn ok(spec: &str) -> (u32, u32, Vec<u32>, String) {
        let u = resolve(spec, Some(PASSWD), Some(GROUP)).expect(spec);
        (u.uid, u.gid, u.groups, u.home)
    }

    #[test]
    fn user_specs_resolve_like_docker() {
        let home = |s: &str| s.to_owned();
        assert_eq!(ok(""), (0, 0, vec![0, 10], home("/root")));
        assert_eq!(ok("root"), (0, 0, vec![0, 10], home("/root")));
        assert_eq!(ok("app"), (1000, 1000, vec![1000, 50], home("/home/app")));
        assert_eq!(ok("1000"), (1000, 1000, vec![1000, 50], home("/home/app")));
        assert_eq!(ok("app:staff"), (1000, 50, vec![50], home("/home/app")));
        assert_eq!(ok("app:7"), (1000, 7, vec![7], home("/home/app")));
        assert_eq!(ok("4242"), (4242, 0, vec![0], home("/")));
        assert_eq!(ok("4242:4343"), (4242, 4343, vec![4343], home("/")));
        assert!(matches!(
            resolve("ghost", Some(PASSWD), Some(GROUP)),
            Err(Failure::UserNotFound(u)) if u == "ghost"
        ));
        assert!(matches!(
            resolve("app:ghosts", Some(PASSWD), Some(GROUP)),
            Err(Failure::GroupNotFound(g)) if g == "ghosts"
        ));
        assert!(matches!(
            resolve("app", None, None),
            Err(Failure::UserNotFound(_))
        ));
        let u = resolve("", None, None).expect("root without passwd");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/"));
    }
}
