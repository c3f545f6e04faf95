//! Everything a child will touch, built in the parent before `fork`.
//!
//! [`Image`] is built once per program (the PATH search, the environment
//! block, the working directory); [`Argv`] once per spawn (it carries the
//! counter). Both hold `CString`s and the NULL-terminated pointer arrays the
//! child passes to `execve`, so the child allocates nothing. [`Attrs`]
//! (ids, limits, nice, umask, stdin, tty) is resolved into plain numbers here
//! too, from the config's process attributes.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use libc::c_char;

use crate::config::{Credentials, ProcessAttrs, StdinMode};
use crate::error::Error;

/// A C string array with its NULL-terminated pointer vector. The pointers
/// point into the `CString`s' heap buffers, which do not move when the
/// `Vec` does.
pub struct CArray {
    strings: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl CArray {
    pub fn new(strings: Vec<CString>) -> CArray {
        let mut ptrs: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        CArray { strings, ptrs }
    }

    pub fn as_ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }

    /// The pointers without the terminating NULL.
    pub fn ptrs(&self) -> &[*const c_char] {
        &self.ptrs[..self.strings.len()]
    }

    #[cfg(test)]
    pub fn strings(&self) -> &[CString] {
        &self.strings
    }
}

impl Clone for CArray {
    fn clone(&self) -> CArray {
        CArray::new(self.strings.clone())
    }
}

/// `KEY=` of a `KEY=VALUE` entry.
fn env_key(entry: &[u8]) -> &[u8] {
    entry
        .iter()
        .position(|&b| b == b'=')
        .map_or(entry, |i| &entry[..=i])
}

/// An environment block: a program's, built once and shared by all its
/// instances, with an instance's own variables (PS, PORT) laid over it.
/// An instance costs its own strings and one pointer array, built per
/// spawn; a copy of the whole environment per instance was most of
/// brood's memory with thousands of instances.
pub struct Envp {
    base: Rc<CArray>,
    /// The instance's own `KEY=VALUE` strings: only `ptrs` reads them,
    /// through raw pointers, and this keeps them alive.
    #[cfg_attr(not(test), allow(dead_code))]
    own: Vec<CString>,
    /// With `own`: the NULL-terminated array over `base` and `own`, each
    /// of `own` in place of the base's entry of the same name. Empty
    /// otherwise, and `base`'s array is used.
    ptrs: Vec<*const c_char>,
}

impl Envp {
    fn new(base: CArray) -> Envp {
        Envp {
            base: Rc::new(base),
            own: Vec::new(),
            ptrs: Vec::new(),
        }
    }

    pub fn as_ptr(&self) -> *const *const c_char {
        if self.ptrs.is_empty() {
            self.base.as_ptr()
        } else {
            self.ptrs.as_ptr()
        }
    }

    /// This environment with `vars` set (replacing same-named ones).
    pub fn with_vars(&self, vars: &[(OsString, OsString)]) -> Result<Envp, Error> {
        let mut own = Vec::with_capacity(vars.len());
        for (k, v) in vars {
            let mut entry = k.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(v.as_bytes());
            own.push(cstring(&entry, "an environment variable")?);
        }
        let mut placed = vec![false; own.len()];
        let mut ptrs = Vec::with_capacity(self.base.strings.len() + own.len() + 1);
        for s in &self.base.strings {
            let k = env_key(s.as_bytes());
            match own.iter().position(|o| env_key(o.as_bytes()) == k) {
                Some(i) if !placed[i] => {
                    placed[i] = true;
                    ptrs.push(own[i].as_ptr());
                }
                Some(_) => {}
                None => ptrs.push(s.as_ptr()),
            }
        }
        for (o, done) in own.iter().zip(&placed) {
            if !done {
                ptrs.push(o.as_ptr());
            }
        }
        ptrs.push(std::ptr::null());
        Ok(Envp {
            base: Rc::clone(&self.base),
            own,
            ptrs,
        })
    }

    /// The `KEY=VALUE` strings in order.
    #[cfg(test)]
    pub fn strings(&self) -> Vec<&std::ffi::CStr> {
        if self.ptrs.is_empty() {
            return self.base.strings.iter().map(|s| s.as_c_str()).collect();
        }
        let all: Vec<&CString> = self.base.strings.iter().chain(&self.own).collect();
        self.ptrs[..self.ptrs.len() - 1]
            .iter()
            .filter_map(|p| all.iter().find(|s| s.as_ptr() == *p).map(|s| s.as_c_str()))
            .collect()
    }
}

fn cstring(bytes: &[u8], what: &str) -> Result<CString, Error> {
    CString::new(bytes).map_err(|_| Error::usage(format!("{what} contains a NUL byte")))
}

/// What the child changes about itself before exec (SPEC 17), as the
/// plain numbers it passes to the syscalls. Empty: it keeps brood's.
#[derive(Clone, Debug, Default)]
pub struct Attrs {
    /// `setgroups` list, gid and uid; `None` keeps brood's.
    pub credentials: Option<Credentials>,
    pub umask: Option<libc::mode_t>,
    pub nice: Option<libc::c_int>,
    /// `(RLIMIT_*, limit)`, applied after brood's own RLIMIT_NOFILE is
    /// given back, so a configured `nofile` wins.
    pub rlimits: Vec<(libc::c_int, libc::rlimit)>,
    /// A pipe that brood holds open on stdin instead of /dev/null.
    pub stdin_pipe: bool,
    /// A pseudo-terminal for stdin, stdout and stderr (SPEC 18).
    pub tty: bool,
}

impl Attrs {
    /// Resolve a program's attributes: names to ids (a config error if
    /// one is unknown, or if switching needs a root brood does not have).
    pub fn resolve(attrs: &ProcessAttrs, program: &str) -> Result<Attrs, Error> {
        let credentials = attrs.credentials(program)?;
        attrs.check_limits(program)?;
        let value = |v: Option<u64>| v.map_or(libc::RLIM_INFINITY, |n| n as libc::rlim_t);
        Ok(Attrs {
            credentials,
            umask: attrs.umask.map(|m| m as libc::mode_t),
            nice: attrs.nice,
            rlimits: attrs
                .rlimits
                .iter()
                .map(|l| {
                    (
                        l.resource,
                        libc::rlimit {
                            rlim_cur: value(l.limit.soft),
                            rlim_max: value(l.limit.hard),
                        },
                    )
                })
                .collect(),
            stdin_pipe: attrs.stdin == StdinMode::Pipe,
            tty: attrs.tty,
        })
    }
}

/// The parts of a launch that are the same for every instance of a program.
pub struct Image {
    /// The program as the user wrote it, for messages.
    pub program: OsString,
    /// Paths `execve` tries in order.
    pub paths: CArray,
    pub envp: Envp,
    pub cwd: Option<CString>,
    /// Process attributes the child applies.
    pub attrs: Attrs,
}

impl Image {
    /// Resolve `program` against PATH (as execvp would) and build the
    /// environment: brood's own, with `env` laid over it.
    pub fn new(program: &OsStr, env: &[(OsString, OsString)], cwd: Option<&Path>) -> Result<Image, Error> {
        Image::with_attrs(program, env, cwd, false, Attrs::default())
    }

    /// As [`Image::new`], with process attributes; `clear_env` starts the
    /// environment empty instead of from brood's (the PATH search then
    /// uses `env`'s PATH, or the default path).
    pub fn with_attrs(
        program: &OsStr,
        env: &[(OsString, OsString)],
        cwd: Option<&Path>,
        clear_env: bool,
        attrs: Attrs,
    ) -> Result<Image, Error> {
        if program.is_empty() {
            return Err(Error::usage("the program name is empty".to_string()));
        }
        let mut vars: Vec<(OsString, OsString)> = if clear_env {
            Vec::new()
        } else {
            std::env::vars_os().collect()
        };
        for (k, v) in env {
            match vars.iter_mut().find(|(name, _)| name == k) {
                Some(slot) => slot.1 = v.clone(),
                None => vars.push((k.clone(), v.clone())),
            }
        }
        let path_var = vars.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone());
        let mut envp = Vec::with_capacity(vars.len());
        for (k, v) in &vars {
            let mut entry = k.clone().into_vec();
            entry.push(b'=');
            entry.extend_from_slice(v.as_bytes());
            envp.push(cstring(&entry, "an environment variable")?);
        }
        let candidates = search_path(program, path_var.as_deref(), cwd)?;
        let cwd = match cwd {
            Some(dir) => Some(cstring(dir.as_os_str().as_bytes(), "the working directory")?),
            None => None,
        };
        Ok(Image {
            program: program.to_os_string(),
            paths: CArray::new(candidates),
            envp: Envp::new(CArray::new(envp)),
            cwd,
            attrs,
        })
    }

    /// This image with `vars` laid over its environment (an instance's
    /// PS and PORT): the PATH search and the program's environment are
    /// not done again, and the environment's strings are shared.
    pub fn with_vars(&self, vars: &[(OsString, OsString)]) -> Result<Image, Error> {
        Ok(Image {
            program: self.program.clone(),
            paths: self.paths.clone(),
            envp: self.envp.with_vars(vars)?,
            cwd: self.cwd.clone(),
            attrs: self.attrs.clone(),
        })
    }

    pub fn display_name(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }
}

/// The candidates execve tries. With a slash, the program itself. Without,
/// each PATH entry; when one of them is an executable file, only that one,
/// so a spawn costs one execve, not one per PATH entry.
fn search_path(program: &OsStr, path_var: Option<&OsStr>, cwd: Option<&Path>) -> Result<Vec<CString>, Error> {
    let bytes = program.as_bytes();
    if bytes.contains(&b'/') {
        return Ok(vec![cstring(bytes, "the program name")?]);
    }
    let path_var = path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    let mut all = Vec::new();
    for dir in path_var.as_bytes().split(|&b| b == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let mut full = PathBuf::from(OsStr::from_bytes(dir));
        full.push(program);
        let runnable = if full.is_relative() {
            cwd.map(|c| c.join(&full)).unwrap_or_else(|| full.clone())
        } else {
            full.clone()
        };
        let c = cstring(full.as_os_str().as_bytes(), "the program path")?;
        if is_executable_file(&runnable) {
            return Ok(vec![c]);
        }
        all.push(c);
    }
    Ok(all)
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) => meta.is_file() && meta.permissions().mode() & 0o111 != 0,
        Err(_) => false,
    }
}

/// argv for one spawn: the user's arguments with the counter substituted
/// for `{n}`, or, with `append`, added at the end when no argument names it.
pub fn build_argv(program: &OsStr, args: &[OsString], n: Option<u64>, append: bool) -> Result<CArray, Error> {
    let mut argv = Vec::with_capacity(args.len() + 2);
    argv.push(cstring(program.as_bytes(), "the program name")?);
    let counter = n.map(|n| n.to_string());
    let mut substituted = false;
    for arg in args {
        let bytes = arg.as_bytes();
        match &counter {
            Some(c) if contains(bytes, b"{n}") => {
                substituted = true;
                argv.push(cstring(&replace(bytes, b"{n}", c.as_bytes()), "an argument")?);
            }
            _ => argv.push(cstring(bytes, "an argument")?),
        }
    }
    if let (Some(c), false, true) = (&counter, substituted, append) {
        argv.push(cstring(c.as_bytes(), "the counter")?);
    }
    Ok(CArray::new(argv))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn replace(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len() + with.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(a: &CArray) -> Vec<String> {
        a.strings()
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn counter_is_appended_when_no_placeholder() {
        let a = build_argv(OsStr::new("hello"), &["x".into()], Some(3), true).unwrap();
        assert_eq!(strs(&a), ["hello", "x", "3"]);
    }

    #[test]
    fn placeholder_is_substituted_everywhere_and_not_appended() {
        let a = build_argv(OsStr::new("p"), &["a{n}b".into(), "{n}".into()], Some(12), true).unwrap();
        assert_eq!(strs(&a), ["p", "a12b", "12"]);
    }

    #[test]
    fn no_counter_leaves_args_alone() {
        let a = build_argv(OsStr::new("p"), &["{n}".into()], None, true).unwrap();
        assert_eq!(strs(&a), ["p", "{n}"]);
    }

    #[test]
    fn run_mode_substitutes_but_never_appends() {
        let a = build_argv(OsStr::new("p"), &["--id={n}".into()], Some(2), false).unwrap();
        assert_eq!(strs(&a), ["p", "--id=2"]);
        let a = build_argv(OsStr::new("p"), &["x".into()], Some(2), false).unwrap();
        assert_eq!(strs(&a), ["p", "x"]);
    }

    #[test]
    fn nul_in_argument_is_an_error_not_a_panic() {
        assert!(build_argv(
            OsStr::new("p"),
            &[OsString::from_vec(b"a\0b".to_vec())],
            None,
            true
        )
        .is_err());
    }

    #[test]
    fn path_search_finds_sh_once() {
        let c = search_path(OsStr::new("sh"), Some(OsStr::new("/nonexistent:/bin")), None).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].to_str().unwrap(), "/bin/sh");
    }

    #[test]
    fn path_search_keeps_every_candidate_when_nothing_matches() {
        let c = search_path(OsStr::new("no-such-prog"), Some(OsStr::new("/a:/b")), None).unwrap();
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn instance_vars_replace_in_place_or_come_last_and_the_base_is_shared() {
        let env = [
            (OsString::from("PS"), OsString::from("old")),
            (OsString::from("A"), OsString::from("1")),
        ];
        let image =
            Image::with_attrs(OsStr::new("/bin/true"), &env, None, true, Attrs::default()).expect("image");
        let inst = image
            .with_vars(&[
                (OsString::from("PORT"), OsString::from("5001")),
                (OsString::from("PS"), OsString::from("web.2")),
            ])
            .expect("vars");
        let got: Vec<&[u8]> = inst.envp.strings().iter().map(|s| s.to_bytes()).collect();
        assert_eq!(got, [&b"PS=web.2"[..], b"A=1", b"PORT=5001"]);
        let base: Vec<&[u8]> = image.envp.strings().iter().map(|s| s.to_bytes()).collect();
        assert_eq!(base, [&b"PS=old"[..], b"A=1"]);
        assert!(Rc::ptr_eq(&image.envp.base, &inst.envp.base));
        // The pointer array is NULL-terminated after the three.
        // SAFETY: as_ptr points at 4 valid pointers (3 strings and NULL).
        assert!(unsafe { *inst.envp.as_ptr().add(3) }.is_null());
    }
}
