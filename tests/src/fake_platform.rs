//! Fake command-line tools of the platforms the command driver serves: Integrity VM (`hpvmcreate`,
//! `hpvmmodify`, `hpvmremove`, `hpvmstart`, `hpvmstop`, `hpvmstatus`, `hpvmmigrate`), Serviceguard
//! (`cmmodpkg`, `cmviewcl`) and libvirt (`virsh`). One binary (`fake_platform`), linked under each
//! tool's name; it acts by the name it was called by.
//!
//! They implement the documented behaviour the shipped templates rely on, on a state directory
//! shared by every fake host (`FAKE_PLATFORM_ROOT`; the calling host is `FAKE_PLATFORM_HOST`),
//! and refuse what the real tools refuse: unknown options, a missing guest, starting a running
//! guest, removing or migrating offline a running one, moving online a guest with
//! `online_migration=disabled`, `virsh migrate --offline` without `--persistent`. So a template
//! that passes arguments wrongly fails its test. Every call is appended to `commands.log` (host,
//! tool, arguments, exit code) for the tests to check the order of actions, and every start of a
//! guest that already runs on another host is appended to `violations.log`: the checker of
//! "never two running copies" over every transition, not a sample.
//!
//! A guest here is state, not a process: it is "running" from its start to its stop.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The tools this binary answers to.
pub const TOOLS: [&str; 10] = [
    "hpvmcreate",
    "hpvmmodify",
    "hpvmremove",
    "hpvmstart",
    "hpvmstop",
    "hpvmstatus",
    "hpvmmigrate",
    "cmmodpkg",
    "cmviewcl",
    "virsh",
];

/// An Integrity VM guest's configuration and state on one host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HpvmGuest {
    pub number: u32,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Resource specifications (`disk:avio_stor:0,1,0:lv:/dev/vg01/lvol1`), with their hardware
    /// address filled in as hpvmstatus shows them.
    pub devices: Vec<String>,
    pub online_migration: bool,
    pub runnable: bool,
    pub modifiable: bool,
    pub on: bool,
}

/// A Serviceguard package as configured (cluster-wide).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SgPackage {
    pub autorun: bool,
    /// Node switching, per node the package may run on.
    pub nodes: BTreeMap<String, bool>,
}

/// A libvirt domain on one host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    /// The persistent definition's XML (`None`: transient, runs until stopped).
    pub xml: Option<String>,
    pub vcpus: u32,
    pub memory_kib: u64,
    pub running: bool,
}

/// The shared state of every fake host.
pub struct Platform {
    pub root: PathBuf,
}

struct Fail(i32, String);

type Outcome = Result<String, Fail>;

fn fail<T>(msg: impl Into<String>) -> Result<T, Fail> {
    Err(Fail(1, msg.into()))
}

fn usage<T>(tool: &str, msg: impl std::fmt::Display) -> Result<T, Fail> {
    Err(Fail(2, format!("{tool}: {msg}")))
}

impl Platform {
    pub fn new(root: &Path) -> Platform {
        Platform { root: root.to_path_buf() }
    }

    /// Makes a host known (what a VM host's installation does).
    pub fn add_host(&self, host: &str) {
        for sub in ["hpvm", "libvirt"] {
            fs::create_dir_all(self.root.join("hosts").join(host).join(sub)).unwrap();
        }
    }

    /// Configures a Serviceguard package (what `cmapplyconf` of its configuration does).
    pub fn add_package(&self, package: &str, nodes: &[&str]) {
        let p = SgPackage { autorun: true, nodes: nodes.iter().map(|n| (n.to_string(), true)).collect() };
        self.put(&self.package_path(package), &p);
    }

    pub fn package(&self, package: &str) -> Option<SgPackage> {
        self.get(&self.package_path(package))
    }

    pub fn hpvm_guest(&self, host: &str, guest: &str) -> Option<HpvmGuest> {
        self.get(&self.hpvm_path(host, guest))
    }

    pub fn domain(&self, host: &str, dom: &str) -> Option<Domain> {
        self.get(&self.domain_path(host, dom))
    }

    /// Hosts on which `guest` runs now (either platform).
    pub fn running_on(&self, guest: &str) -> Vec<String> {
        self.hosts()
            .into_iter()
            .filter(|h| {
                self.hpvm_guest(h, guest).is_some_and(|g| g.on) || self.domain(h, guest).is_some_and(|d| d.running)
            })
            .collect()
    }

    /// Every call made so far: `host tool args… => code`. Read under the tools' lock, so a call
    /// whose effect is visible in the state is in the list.
    pub fn commands(&self) -> Vec<String> {
        let _lock = self.lock();
        fs::read_to_string(self.root.join("commands.log")).unwrap_or_default().lines().map(String::from).collect()
    }

    /// Starts of a guest that already ran on another host.
    pub fn violations(&self) -> Vec<String> {
        let _lock = self.lock();
        fs::read_to_string(self.root.join("violations.log")).unwrap_or_default().lines().map(String::from).collect()
    }

    /// Changes a guest behind the agents' backs, as an operator at the console would.
    pub fn edit_hpvm(&self, host: &str, guest: &str, f: impl FnOnce(&mut HpvmGuest)) {
        let _lock = self.lock();
        let path = self.hpvm_path(host, guest);
        let mut g: HpvmGuest = self.get(&path).expect("the guest exists");
        f(&mut g);
        self.put(&path, &g);
    }

    pub fn edit_domain(&self, host: &str, dom: &str, f: impl FnOnce(&mut Domain)) {
        let _lock = self.lock();
        let path = self.domain_path(host, dom);
        let mut d: Domain = self.get(&path).expect("the domain exists");
        f(&mut d);
        self.put(&path, &d);
    }

    fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = fs::read_dir(self.root.join("hosts"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        hosts.sort();
        hosts
    }

    fn host_known(&self, host: &str) -> bool {
        !host.is_empty() && !host.contains('/') && self.root.join("hosts").join(host).is_dir()
    }

    fn package_path(&self, package: &str) -> PathBuf {
        self.root.join("serviceguard").join(format!("{package}.json"))
    }

    fn hpvm_path(&self, host: &str, guest: &str) -> PathBuf {
        self.root.join("hosts").join(host).join("hpvm").join(format!("{guest}.json"))
    }

    fn domain_path(&self, host: &str, dom: &str) -> PathBuf {
        self.root.join("hosts").join(host).join("libvirt").join(format!("{dom}.json"))
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Option<T> {
        serde_json::from_slice(&fs::read(path).ok()?).ok()
    }

    fn put<T: Serialize>(&self, path: &Path, value: &T) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec(value).unwrap()).unwrap();
        fs::rename(&tmp, path).unwrap();
    }

    fn remove(&self, path: &Path) {
        let _ = fs::remove_file(path);
    }

    /// One tool call at a time across every fake host (the real tools lock their databases).
    fn lock(&self) -> fs::File {
        fs::create_dir_all(&self.root).unwrap();
        let f = fs::OpenOptions::new().create(true).append(true).open(self.root.join(".lock")).unwrap();
        // SAFETY: flock on a descriptor this function owns.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock");
        f
    }

    fn append(&self, file: &str, line: &str) {
        let mut f = fs::OpenOptions::new().create(true).append(true).open(self.root.join(file)).unwrap();
        writeln!(f, "{line}").unwrap();
    }

    /// Records a start of `guest` on `host`; a start while it runs elsewhere is a violation.
    fn starting(&self, host: &str, guest: &str) {
        let others: Vec<String> = self.running_on(guest).into_iter().filter(|h| h != host).collect();
        if !others.is_empty() {
            self.append("violations.log", &format!("{guest} started on {host} while running on {}", others.join(",")));
        }
    }
}

/// The entry point of the `fake_platform` binary.
pub fn main() -> std::process::ExitCode {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let tool = Path::new(&argv0).file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let args: Vec<String> = args.collect();
    let (Some(root), Some(host)) = (std::env::var_os("FAKE_PLATFORM_ROOT"), std::env::var("FAKE_PLATFORM_HOST").ok())
    else {
        eprintln!("{tool}: FAKE_PLATFORM_ROOT and FAKE_PLATFORM_HOST must be set");
        return std::process::ExitCode::from(3);
    };
    let p = Platform::new(Path::new(&root));
    let lock = p.lock();
    let result = if !p.host_known(&host) {
        Err(Fail(3, format!("{tool}: this host ({host}) is not installed")))
    } else {
        match tool.as_str() {
            "hpvmcreate" => hpvmcreate(&p, &host, &args),
            "hpvmmodify" => hpvmmodify(&p, &host, &args),
            "hpvmremove" => hpvmremove(&p, &host, &args),
            "hpvmstart" => hpvmstart(&p, &host, &args),
            "hpvmstop" => hpvmstop(&p, &host, &args),
            "hpvmstatus" => hpvmstatus(&p, &host, &args),
            "hpvmmigrate" => hpvmmigrate(&p, &host, &args),
            "cmmodpkg" => cmmodpkg(&p, &args),
            "cmviewcl" => cmviewcl(&p, &args),
            "virsh" => virsh(&p, &host, &args),
            other => Err(Fail(127, format!("fake_platform: unknown tool {other:?}"))),
        }
    };
    let code = match &result {
        Ok(_) => 0,
        Err(Fail(code, _)) => *code,
    };
    p.append("commands.log", &format!("{host} {tool} {} => {code}", args.join(" ")));
    drop(lock);
    match result {
        Ok(out) => {
            print!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Err(Fail(code, msg)) => {
            eprintln!("{msg}");
            std::process::ExitCode::from(code as u8)
        }
    }
}

/// Options as the HP-UX tools take them: `-X value` or a lone flag.
struct Opts {
    values: Vec<(char, String)>,
    flags: Vec<char>,
}

impl Opts {
    fn parse(tool: &str, args: &[String], with_value: &str, flags: &str) -> Result<Opts, Fail> {
        let mut o = Opts { values: Vec::new(), flags: Vec::new() };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(c) = a.strip_prefix('-').filter(|c| c.chars().count() == 1).and_then(|c| c.chars().next()) else {
                return usage(tool, format!("unexpected argument {a:?}"));
            };
            if with_value.contains(c) {
                let Some(v) = it.next() else { return usage(tool, format!("option -{c} needs a value")) };
                o.values.push((c, v.clone()));
            } else if flags.contains(c) {
                o.flags.push(c);
            } else {
                return usage(tool, format!("unknown option -{c}"));
            }
        }
        Ok(o)
    }

    fn one(&self, c: char) -> Option<&str> {
        self.values.iter().rev().find(|(k, _)| *k == c).map(|(_, v)| v.as_str())
    }

    fn all(&self, c: char) -> Vec<&str> {
        self.values.iter().filter(|(k, _)| *k == c).map(|(_, v)| v.as_str()).collect()
    }

    fn flag(&self, c: char) -> bool {
        self.flags.contains(&c)
    }

    fn guest(&self, tool: &str) -> Result<String, Fail> {
        match self.one('P') {
            Some(g) if !g.is_empty() && !g.contains('/') => Ok(g.to_string()),
            _ => usage(tool, "-P vm_name is required"),
        }
    }
}

fn memory_mib(tool: &str, v: &str) -> Result<u64, Fail> {
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = num.parse().or_else(|_| usage(tool, format!("bad memory size {v:?}")))?;
    match unit {
        "M" | "m" => Ok(n),
        "G" | "g" => Ok(n * 1024),
        _ => usage(tool, format!("bad memory size {v:?}: give a number with M or G")),
    }
}

/// Checks a resource specification `kind:adaptor:hw:type:resource` and fills in the hardware
/// address as Integrity VM assigns it.
fn device(tool: &str, spec: &str, slot: usize) -> Result<String, Fail> {
    let f: Vec<&str> = spec.split(':').collect();
    if f.len() != 5 || f[4].is_empty() {
        return usage(tool, format!("bad resource {spec:?}: expected kind:adaptor:[hw]:type:resource"));
    }
    let ok = match f[0] {
        "disk" | "dvd" => ["avio_stor", "scsi"].contains(&f[1]) && ["disk", "lv", "file", "null"].contains(&f[3]),
        "network" => ["avio_lan", "lan"].contains(&f[1]) && f[3] == "vswitch",
        _ => false,
    };
    if !ok {
        return usage(tool, format!("bad resource {spec:?}"));
    }
    let hw = if f[2].is_empty() { format!("0,{slot},0") } else { f[2].to_string() };
    Ok(format!("{}:{}:{hw}:{}:{}", f[0], f[1], f[3], f[4]))
}

/// Without its hardware address.
fn bare(dev: &str) -> String {
    let mut f: Vec<&str> = dev.split(':').collect();
    if f.len() == 5 {
        f[2] = "";
    }
    f.join(":")
}

fn apply_x(tool: &str, g: &mut HpvmGuest, settings: &[&str]) -> Result<(), Fail> {
    for x in settings {
        let Some((k, v)) = x.split_once('=') else { return usage(tool, format!("-x {x}: expected attribute=value")) };
        let on = match v {
            "enabled" => true,
            "disabled" => false,
            _ => return usage(tool, format!("-x {x}: the value is enabled or disabled")),
        };
        match k {
            "online_migration" => g.online_migration = on,
            "runnable_status" => g.runnable = on,
            "modify_status" => g.modifiable = on,
            _ => return usage(tool, format!("-x {k}: unknown attribute")),
        }
    }
    Ok(())
}

/// The names of the records (`<name>.json`) in `dir`, sorted.
fn records(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".json").map(String::from))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The guest `name` on `host`, or the tool's "not found".
fn existing(p: &Platform, host: &str, tool: &str, name: &str) -> Result<HpvmGuest, Fail> {
    p.hpvm_guest(host, name).ok_or_else(|| Fail(1, format!("{tool}: Unable to find the virtual machine '{name}'")))
}

fn hpvmcreate(p: &Platform, host: &str, args: &[String]) -> Outcome {
    let t = "hpvmcreate";
    let o = Opts::parse(t, args, "Pcrax", "")?;
    let name = o.guest(t)?;
    if p.hpvm_guest(host, &name).is_some() {
        return fail(format!("{t}: The virtual machine '{name}' already exists"));
    }
    let number = fs::read_dir(p.root.join("hosts").join(host).join("hpvm")).map(|d| d.count() as u32 + 1).unwrap_or(1);
    let mut g = HpvmGuest {
        number,
        vcpus: 1,
        memory_mib: 2048,
        online_migration: true,
        runnable: true,
        modifiable: true,
        ..Default::default()
    };
    if let Some(c) = o.one('c') {
        g.vcpus = c.parse().or_else(|_| usage(t, format!("bad vcpu count {c:?}")))?;
    }
    if let Some(r) = o.one('r') {
        g.memory_mib = memory_mib(t, r)?;
    }
    for (i, a) in o.all('a').into_iter().enumerate() {
        g.devices.push(device(t, a, i)?);
    }
    apply_x(t, &mut g, &o.all('x'))?;
    p.put(&p.hpvm_path(host, &name), &g);
    Ok(String::new())
}

fn hpvmmodify(p: &Platform, host: &str, args: &[String]) -> Outcome {
    let t = "hpvmmodify";
    let o = Opts::parse(t, args, "Pcradx", "")?;
    let name = o.guest(t)?;
    let mut g = existing(p, host, t, &name)?;
    let xs = o.all('x');
    let only_modify_status = !xs.is_empty()
        && xs.iter().all(|x| x.starts_with("modify_status="))
        && o.values.iter().all(|(k, _)| *k == 'P' || *k == 'x');
    if !g.modifiable && !only_modify_status {
        return fail(format!(
            "{t}: The virtual machine '{name}' is not modifiable on this VM Host (modify_status=disabled)"
        ));
    }
    if let Some(c) = o.one('c') {
        g.vcpus = c.parse().or_else(|_| usage(t, format!("bad vcpu count {c:?}")))?;
    }
    if let Some(r) = o.one('r') {
        g.memory_mib = memory_mib(t, r)?;
    }
    for d in o.all('d') {
        let before = g.devices.len();
        g.devices.retain(|x| bare(x) != bare(d));
        if g.devices.len() == before {
            return fail(format!("{t}: device {d} is not attached to '{name}'"));
        }
    }
    for a in o.all('a') {
        let dev = device(t, a, g.devices.len())?;
        if g.devices.iter().any(|x| bare(x) == bare(&dev)) {
            return fail(format!("{t}: device {a} is already attached to '{name}'"));
        }
        g.devices.push(dev);
    }
    apply_x(t, &mut g, &xs)?;
    p.put(&p.hpvm_path(host, &name), &g);
    Ok(String::new())
}

fn hpvmremove(p: &Platform, host: &str, args: &[String]) -> Outcome {
    let t = "hpvmremove";
    let o = Opts::parse(t, args, "P", "Fq")?;
    let name = o.guest(t)?;
    let g = existing(p, host, t, &name)?;
    if !o.flag('F') && !o.flag('q') {
        return fail(format!("{t}: remove '{name}'? (y/n): no answer on a terminal; give -F"));
    }
    if g.on {
        return fail(format!("{t}: The virtual machine '{name}' is running; stop it first"));
    }
    p.remove(&p.hpvm_path(host, &name));
    Ok(String::new())
}

fn hpvmstart(p: &Platform, host: &str, args: &[String]) -> Outcome {
    let t = "hpvmstart";
    let o = Opts::parse(t, args, "P", "qF")?;
    let name = o.guest(t)?;
    let mut g = existing(p, host, t, &name)?;
    if g.on {
        return fail(format!("{t}: The virtual machine '{name}' is already running"));
    }
    if !g.runnable {
        return fail(format!(
            "{t}: The virtual machine '{name}' is not runnable on this VM Host (runnable_status=disabled)"
        ));
    }
    p.starting(host, &name);
    g.on = true;
    p.put(&p.hpvm_path(host, &name), &g);
    Ok(format!("{t}: Successful start initiation of guest '{name}'\n"))
}

fn hpvmstop(p: &Platform, host: &str, args: &[String]) -> Outcome {
    let t = "hpvmstop";
    let o = Opts::parse(t, args, "P", "ghqF")?;
    let name = o.guest(t)?;
    if o.flag('g') && o.flag('h') {
        return usage(t, "-g and -h exclude each other");
    }
    let mut g = existing(p, host, t, &name)?;
    if !o.flag('q') && !o.flag('F') {
        return fail(format!("{t}: stop '{name}'? (y/n): no answer on a terminal; give -q"));
    }
    if !g.on {
        return fail(format!("{t}: The virtual machine '{name}' is not running"));
    }
    g.on = false;
    p.put(&p.hpvm_path(host, &name), &g);
    Ok(String::new())
}

fn hpvmstatus(p: &Platform, host: &str, args: &[String]) -> Outcome {
    let t = "hpvmstatus";
    let o = Opts::parse(t, args, "P", "d")?;
    let mut names = records(&p.root.join("hosts").join(host).join("hpvm"));
    if let Some(name) = o.one('P') {
        let g = existing(p, host, t, name)?;
        if o.flag('d') {
            return Ok(g.devices.iter().map(|d| format!("{d}\n")).collect());
        }
        names = vec![name.to_string()];
    } else if o.flag('d') {
        return usage(t, "-d needs -P vm_name");
    }
    let mut out = String::from(
        "[Virtual Machines]\n\
         Virtual Machine Name VM #  OS Type State     #VCPUs #Devs #Nets Memory  Runsysid\n\
         ==================== ===== ======= ========= ====== ===== ===== ======= ========\n",
    );
    for name in names {
        let Some(g) = p.hpvm_guest(host, &name) else { continue };
        let state = if g.on { "On (OS)" } else { "Off" };
        let memory = if g.memory_mib % 1024 == 0 {
            format!("{} GB", g.memory_mib / 1024)
        } else {
            format!("{} MB", g.memory_mib)
        };
        let nets = g.devices.iter().filter(|d| d.starts_with("network:")).count();
        let devs = g.devices.len() - nets;
        out.push_str(&format!(
            "{name:<20} {:>5} HPUX    {state:<9} {:>6} {devs:>5} {nets:>5} {memory:>7} {:>8}\n",
            g.number, g.vcpus, 0
        ));
    }
    Ok(out)
}

fn hpvmmigrate(p: &Platform, host: &str, args: &[String]) -> Outcome {
    let t = "hpvmmigrate";
    let o = Opts::parse(t, args, "Ph", "o")?;
    let name = o.guest(t)?;
    let Some(target) = o.one('h') else { return usage(t, "-h target_VM_host is required") };
    if !p.host_known(target) {
        return fail(format!("{t}: Unable to contact VM Host '{target}'"));
    }
    if target == host {
        return fail(format!("{t}: '{target}' is this VM Host"));
    }
    let mut g = existing(p, host, t, &name)?;
    if let Some(there) = p.hpvm_guest(target, &name) {
        if there.on {
            return fail(format!("{t}: The virtual machine '{name}' is running on '{target}'"));
        }
    }
    let online = o.flag('o');
    if online {
        if !g.on {
            return fail(format!("{t}: Online migration needs '{name}' running; it is Off"));
        }
        if !g.online_migration {
            return fail(format!("{t}: Online migration is disabled for '{name}' (online_migration=disabled)"));
        }
    } else if g.on {
        return fail(format!("{t}: '{name}' is running: stop it for an offline migration, or migrate it online (-o)"));
    }
    let number = p.hpvm_guest(target, &name).map(|x| x.number).unwrap_or(g.number);
    let moved = HpvmGuest { number, runnable: true, modifiable: true, on: online, ..g.clone() };
    // The guest resumes on the target as it stops here: one transition, under the lock.
    g.on = false;
    g.runnable = false;
    g.modifiable = false;
    p.put(&p.hpvm_path(host, &name), &g);
    p.put(&p.hpvm_path(target, &name), &moved);
    Ok(format!("{t}: Guest '{name}' migrated {} to '{target}'\n", if online { "online" } else { "offline" }))
}

fn cmmodpkg(p: &Platform, args: &[String]) -> Outcome {
    let t = "cmmodpkg";
    let mut enable = None;
    let mut node = None;
    let mut package = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-e" | "-d" => {
                if enable.replace(a == "-e").is_some() {
                    return usage(t, "give one of -e and -d");
                }
            }
            "-n" => match it.next() {
                Some(n) => node = Some(n.clone()),
                None => return usage(t, "-n needs a node name"),
            },
            s if s.starts_with('-') => return usage(t, format!("unknown option {s}")),
            s => {
                if package.replace(s.to_string()).is_some() {
                    return usage(t, "one package name");
                }
            }
        }
    }
    let (Some(enable), Some(package)) = (enable, package) else {
        return usage(t, "usage: cmmodpkg {-e|-d} [-n node_name] package_name");
    };
    let Some(mut pk) = p.package(&package) else { return fail(format!("{t}: Package {package} not found")) };
    match node {
        Some(n) => match pk.nodes.get_mut(&n) {
            Some(v) => *v = enable,
            None => return fail(format!("{t}: Node {n} is not configured for package {package}")),
        },
        None => pk.autorun = enable,
    }
    p.put(&p.package_path(&package), &pk);
    Ok(String::new())
}

fn cmviewcl(p: &Platform, args: &[String]) -> Outcome {
    let t = "cmviewcl";
    let (mut verbose, mut line, mut only) = (false, false, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-v" => verbose = true,
            "-f" => match it.next().map(String::as_str) {
                Some("line") => line = true,
                Some(f) => return usage(t, format!("-f {f}: this cmviewcl knows the line format only")),
                None => return usage(t, "-f needs a format"),
            },
            "-p" => only = it.next().cloned(),
            s => return usage(t, format!("unknown option {s}")),
        }
    }
    if !line {
        return usage(t, "this cmviewcl prints the line format only (-f line)");
    }
    let mut names = records(&p.root.join("serviceguard"));
    if let Some(o) = &only {
        if !names.contains(o) {
            return fail(format!("{t}: Package {o} not found"));
        }
        names = vec![o.clone()];
    }
    let mut out = String::new();
    for name in names {
        let Some(pk) = p.package(&name) else { continue };
        let on = |b: bool| if b { "enabled" } else { "disabled" };
        out.push_str(&format!("package:{name}|name={name}\npackage:{name}|autorun={}\n", on(pk.autorun)));
        if verbose {
            for (n, s) in &pk.nodes {
                out.push_str(&format!("package:{name}|node:{n}|switching={}\n", on(*s)));
            }
        }
    }
    Ok(out)
}

/// The value of an XML element's text in a simple document, and its `unit` attribute.
fn element<'a>(xml: &'a str, tag: &str) -> Option<(Option<&'a str>, &'a str)> {
    let start = xml.find(&format!("<{tag}"))?;
    let rest = &xml[start + tag.len() + 1..];
    let close = rest.find('>')?;
    let attrs = &rest[..close];
    let body = &rest[close + 1..];
    let text = &body[..body.find(&format!("</{tag}>"))?];
    let unit = attrs.find("unit=").map(|i| attrs[i + 6..].split(['\'', '"']).next().unwrap_or(""));
    Some((unit, text.trim()))
}

fn virsh(p: &Platform, host: &str, args: &[String]) -> Outcome {
    let t = "virsh";
    let Some((cmd, rest)) = args.split_first() else { return usage(t, "give a command") };
    let flags: Vec<&str> = rest.iter().filter(|a| a.starts_with("--")).map(String::as_str).collect();
    let words: Vec<&str> = rest.iter().filter(|a| !a.starts_with("--")).map(String::as_str).collect();
    let known = |allowed: &[&str]| -> Result<(), Fail> {
        match flags.iter().find(|f| !allowed.contains(f)) {
            Some(f) => Err(Fail(1, format!("error: command '{cmd}' doesn't support option {f}"))),
            None => Ok(()),
        }
    };
    let dom_arg = |n: usize| -> Result<String, Fail> {
        if words.len() != n {
            return Err(Fail(1, format!("error: command '{cmd}': expected {n} argument(s), got {}", words.len())));
        }
        Ok(words[0].to_string())
    };
    let get = |d: &str| -> Result<Domain, Fail> {
        p.domain(host, d).ok_or_else(|| Fail(1, format!("error: failed to get domain '{d}'")))
    };
    match cmd.as_str() {
        "list" => {
            known(&["--all", "--name"])?;
            if !flags.contains(&"--name") {
                return Err(Fail(1, "error: this virsh prints names only (--name)".into()));
            }
            let names = records(&p.root.join("hosts").join(host).join("libvirt"));
            let all = flags.contains(&"--all");
            let mut out = String::new();
            for n in names {
                if all || p.domain(host, &n).is_some_and(|d| d.running) {
                    out.push_str(&format!("{n}\n"));
                }
            }
            out.push('\n');
            Ok(out)
        }
        "domstate" => {
            known(&[])?;
            let d = get(&dom_arg(1)?)?;
            Ok(if d.running { "running\n\n" } else { "shut off\n\n" }.into())
        }
        "dominfo" => {
            known(&[])?;
            let name = dom_arg(1)?;
            let d = get(&name)?;
            Ok(format!(
                "Id:             {}\nName:           {name}\nOS Type:        hvm\nState:          {}\nCPU(s):         {}\n\
                 Max memory:     {} KiB\nUsed memory:    {} KiB\nPersistent:     {}\n\n",
                if d.running { "1" } else { "-" },
                if d.running { "running" } else { "shut off" },
                d.vcpus,
                d.memory_kib,
                d.memory_kib,
                if d.xml.is_some() { "yes" } else { "no" },
            ))
        }
        "dumpxml" => {
            known(&["--inactive"])?;
            let name = dom_arg(1)?;
            let d = get(&name)?;
            // The persistent definition (a running domain's live one is the same here, but for
            // changes made since its start, which --inactive asks to see).
            let Some(xml) = d.xml else {
                return Err(Fail(1, format!("error: domain '{name}' has no persistent definition")));
            };
            let (_, vcpus) = element(&xml, "vcpu").unwrap_or((None, "1"));
            let devices = xml.find("<devices>").and_then(|s| xml[s..].find("</devices>").map(|e| &xml[s..s + e + 10]));
            let kib = xml_memory_kib(&xml).unwrap_or(0);
            Ok(format!(
                "<domain type='kvm'>\n  <name>{name}</name>\n  <memory unit='KiB'>{kib}</memory>\n  \
                 <currentMemory unit='KiB'>{kib}</currentMemory>\n  <vcpu placement='static'>{vcpus}</vcpu>\n  {}\n</domain>\n",
                devices.unwrap_or("<devices/>")
            ))
        }
        "define" => {
            known(&[])?;
            let file = dom_arg(1)?;
            let xml =
                fs::read_to_string(&file).map_err(|e| Fail(1, format!("error: Failed to open file '{file}': {e}")))?;
            let bad =
                |why: &str| Fail(1, format!("error: Failed to define domain from {file}\nerror: XML error: {why}"));
            if !xml.trim_start().starts_with("<domain") || !xml.trim_end().ends_with("</domain>") {
                return Err(bad("expected one <domain> element"));
            }
            let (_, name) = element(&xml, "name").ok_or_else(|| bad("missing <name>"))?;
            if name.is_empty() || name.contains(['/', '<', '&']) {
                return Err(bad("bad domain name"));
            }
            let kib = xml_memory_kib(&xml).ok_or_else(|| bad("missing or bad <memory>"))?;
            let vcpus: u32 =
                element(&xml, "vcpu").and_then(|(_, v)| v.parse().ok()).ok_or_else(|| bad("bad <vcpu>"))?;
            let mut d = p.domain(host, name).unwrap_or_default();
            d.xml = Some(xml.clone());
            if !d.running {
                d.vcpus = vcpus;
                d.memory_kib = kib;
            }
            p.put(&p.domain_path(host, name), &d);
            Ok(format!("Domain '{name}' defined from {file}\n\n"))
        }
        "undefine" => {
            known(&[])?;
            let name = dom_arg(1)?;
            let mut d = get(&name)?;
            if d.xml.is_none() {
                return Err(Fail(1, format!("error: Failed to undefine domain '{name}'\nerror: Requested operation is not valid: cannot undefine transient domain")));
            }
            if d.running {
                d.xml = None;
                p.put(&p.domain_path(host, &name), &d);
            } else {
                p.remove(&p.domain_path(host, &name));
            }
            Ok(format!("Domain '{name}' has been undefined\n\n"))
        }
        "start" => {
            known(&[])?;
            let name = dom_arg(1)?;
            let mut d = get(&name)?;
            if d.running {
                return Err(Fail(1, format!("error: Failed to start domain '{name}'\nerror: Requested operation is not valid: domain is already running")));
            }
            let xml = d.xml.clone().expect("a stopped domain is persistent");
            d.memory_kib = xml_memory_kib(&xml).unwrap_or(d.memory_kib);
            d.vcpus = element(&xml, "vcpu").and_then(|(_, v)| v.parse().ok()).unwrap_or(d.vcpus);
            p.starting(host, &name);
            d.running = true;
            p.put(&p.domain_path(host, &name), &d);
            Ok(format!("Domain '{name}' started\n\n"))
        }
        "shutdown" | "destroy" => {
            known(&[])?;
            let name = dom_arg(1)?;
            let mut d = get(&name)?;
            if !d.running {
                return Err(Fail(1, format!("error: Failed to {cmd} domain '{name}'\nerror: Requested operation is not valid: domain is not running")));
            }
            // The fake guest honours an ACPI shutdown at once.
            d.running = false;
            if d.xml.is_none() {
                p.remove(&p.domain_path(host, &name));
            } else {
                p.put(&p.domain_path(host, &name), &d);
            }
            Ok(format!("Domain '{name}' {}\n\n", if cmd == "shutdown" { "is being shutdown" } else { "destroyed" }))
        }
        "migrate" => {
            known(&["--live", "--offline", "--persistent", "--undefinesource", "--verbose"])?;
            if words.len() != 2 {
                return Err(Fail(1, "error: migrate: expected DOMAIN DESTURI".into()));
            }
            let (name, uri) = (words[0].to_string(), words[1]);
            let Some(target) = uri.strip_prefix("qemu+ssh://").and_then(|r| r.strip_suffix("/system")) else {
                return Err(Fail(1, format!("error: this virsh migrates to qemu+ssh://HOST/system only, not {uri}")));
            };
            if !p.host_known(target) {
                return Err(Fail(1, format!("error: operation failed: Failed to connect to remote libvirt URI {uri}")));
            }
            let (offline, live, persistent) =
                (flags.contains(&"--offline"), flags.contains(&"--live"), flags.contains(&"--persistent"));
            if offline && live {
                return Err(Fail(1, "error: --offline and --live are mutually exclusive".into()));
            }
            if offline && !persistent {
                return Err(Fail(1, "error: --offline migration requires --persistent".into()));
            }
            let mut d = get(&name)?;
            if !offline && !d.running {
                return Err(Fail(1, "error: Requested operation is not valid: domain is not running".into()));
            }
            let mut there = p.domain(target, &name).unwrap_or_default();
            if there.running {
                return Err(Fail(1, format!("error: operation failed: domain '{name}' is already active on {target}")));
            }
            if persistent {
                there.xml = d.xml.clone();
            }
            if !offline {
                p.append("migrations.log", &format!("{name} {host} -> {target}"));
                there.running = true;
                there.vcpus = d.vcpus;
                there.memory_kib = d.memory_kib;
                d.running = false;
            } else if !there.running {
                let xml = there.xml.clone().unwrap_or_default();
                there.memory_kib = xml_memory_kib(&xml).unwrap_or(0);
                there.vcpus = element(&xml, "vcpu").and_then(|(_, v)| v.parse().ok()).unwrap_or(1);
            }
            if flags.contains(&"--undefinesource") || d.xml.is_none() && !d.running {
                p.remove(&p.domain_path(host, &name));
            } else {
                p.put(&p.domain_path(host, &name), &d);
            }
            if there.xml.is_some() || there.running {
                p.put(&p.domain_path(target, &name), &there);
            }
            Ok(if flags.contains(&"--verbose") { "Migration: [100 %]\n".into() } else { String::new() })
        }
        other => Err(Fail(1, format!("error: unknown command: '{other}'"))),
    }
}

fn xml_memory_kib(xml: &str) -> Option<u64> {
    let (unit, v) = element(xml, "memory")?;
    let n: u64 = v.parse().ok()?;
    match unit.unwrap_or("KiB") {
        "KiB" | "k" | "K" => Some(n),
        "MiB" | "M" => Some(n * 1024),
        "GiB" | "G" => Some(n * 1024 * 1024),
        _ => None,
    }
}

/// A directory with every fake tool linked under its name, for a driver's `PATH` or template
/// paths.
pub fn install(binary: &Path, dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    for tool in TOOLS {
        let link = dir.join(tool);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(binary, link)?;
    }
    Ok(())
}
