//! VM descriptions from flags and JSON: parsing, defaults and refusals.

use super::*;

#[test]
fn sizes() {
    assert_eq!(parse_size("256M").unwrap(), 256 << 20);
    assert_eq!(parse_size("256").unwrap(), 256 << 20);
    assert_eq!(parse_size("1G").unwrap(), 1 << 30);
    assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
    assert_eq!(parse_size("512k").unwrap(), 512 << 10);
    for bad in [
        "",
        "M",
        "12X",
        "-1",
        "1.5G",
        "99999999999999999999T",
        "20000000T",
    ] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
}

#[test]
fn json_config_with_defaults_and_sizes() {
    let c = VmConfig::from_json(r#"{"kernel": "/k", "memory": "1G", "cpus": 2}"#).unwrap();
    assert_eq!(c.memory, 1 << 30);
    assert_eq!(c.cpus, 2);
    assert_eq!(c.cmdline, DEFAULT_CMDLINE);
    assert!(c.cmdline_workarounds);
    let c = VmConfig::from_json(r#"{"kernel": "/k", "memory": 64}"#).unwrap();
    assert_eq!(c.memory, 64 << 20);
    assert!(VmConfig::from_json(r#"{"kernel": "/k", "cpu": 2}"#).is_err());
    assert!(VmConfig::from_json(r#"{"kernel": "/k", "memory": "lots"}"#).is_err());
    let round = serde_json::to_string(&c).unwrap();
    assert_eq!(VmConfig::from_json(&round).unwrap(), c);
}

#[test]
fn disk_specs() {
    let d: DiskConfig = parse_disk("path=/a.img,readonly=on,id=data0").unwrap();
    assert_eq!(
        d,
        DiskConfig {
            path: "/a.img".into(),
            read_only: true,
            id: Some("data0".into()),
            drive_id: None,
            rate_limiter: None,
        }
    );
    let d = parse_disk("path=/b").unwrap();
    assert!(!d.read_only);
    assert!(parse_disk("path=/b,read_only=on").unwrap().read_only);
    let e = parse_disk("path=/b,read_only=on,readonly=off").unwrap_err();
    assert!(e.to_string().contains("given twice"), "{e}");
    // One spelling in JSON too: readonly, with read_only accepted.
    let c = VmConfig::from_json(r#"{"kernel": "/k", "disks": [{"path": "/a", "readonly": true}, {"path": "/b", "read_only": true}]}"#).unwrap();
    assert!(c.disks.iter().all(|d| d.read_only));
    let json = serde_json::to_string(&c).unwrap();
    assert!(json.contains(r#""readonly":true"#), "{json}");
    // The bare forms: the path first, ro/rw, root (for a command).
    let a = parse_disk_arg("/a.img,ro,root").unwrap();
    assert_eq!(
        (a.disk.path.to_str(), a.disk.read_only, a.root),
        (Some("/a.img"), true, true)
    );
    let a = parse_disk_arg("path=/a.img,rw").unwrap();
    assert_eq!((a.disk.read_only, a.root), (false, false));
    assert!(!parse_disk("/a.img").unwrap().read_only);
    let e = parse_disk("/a.img,root").unwrap_err().to_string();
    assert!(e.contains("only to a command"), "{e}");
    for bad in [
        "",
        "readonly=on",
        "/a,root,root",
        "/a,ro,rw",
        "/a,fast",
        "path=/a,readonly=maybe",
        "path=/a,size=3",
        "path=/a,path=/b",
        "path=/a,id=123456789012345678901",
    ] {
        let e = parse_disk(bad).unwrap_err().to_string();
        assert!(e.starts_with("invalid --disk"), "{bad}: {e}");
    }
}

#[test]
fn net_specs() {
    let n = parse_net("tap=tap0,mac=06:00:AC:10:00:02").unwrap();
    assert_eq!(n.tap, "tap0");
    assert_eq!(n.mac.unwrap().to_string(), "06:00:ac:10:00:02");
    assert_eq!(parse_net("tap=t").unwrap().mac, None);
    for (bad, why) in [
        ("", "required"),
        ("tap=", "empty"),
        ("tap0", "key=value"),
        ("mac=06:00:ac:10:00:02", "required"),
        ("tap=0123456789abcdef", "at most 15"),
        ("tap=a/b", "not a valid interface name"),
        ("tap=t,mac=06:00:ac:10:00", "six hex bytes"),
        ("tap=t,mac=01:00:5e:00:00:01", "unicast"),
        ("tap=t,tap=u", "twice"),
        ("tap=t,queues=2", "unknown option"),
    ] {
        let e = parse_net(bad).unwrap_err().to_string();
        assert!(e.starts_with("invalid --net"), "{bad}: {e}");
        assert!(e.contains(why), "{bad}: {e}");
        assert!(!e.contains('\n'), "{bad}: {e}");
    }
}

#[test]
fn json_net_and_rng() {
    let c = VmConfig::from_json(
        r#"{"kernel": "/k", "net": [{"tap": "tap0", "mac": "06:00:ac:10:00:02"}, {"tap": "tap1"}], "rng": true}"#,
    )
    .unwrap();
    assert_eq!(c.net.len(), 2);
    assert_eq!(c.net[0].mac.unwrap().0, [6, 0, 0xac, 0x10, 0, 2]);
    assert_eq!(c.net[1].mac, None);
    assert!(c.rng);
    let round = serde_json::to_string(&c).unwrap();
    assert_eq!(VmConfig::from_json(&round).unwrap(), c);
    let c = VmConfig::from_json(r#"{"kernel": "/k"}"#).unwrap();
    assert!(c.net.is_empty() && !c.rng);
    for bad in [
        r#"{"kernel": "/k", "net": [{"tap": "t", "mac": "nope"}]}"#,
        r#"{"kernel": "/k", "net": [{"tap": "t", "queues": 2}]}"#,
        r#"{"kernel": "/k", "net": [{"mac": "06:00:ac:10:00:02"}]}"#,
        r#"{"kernel": "/k", "rng": "yes"}"#,
    ] {
        assert!(VmConfig::from_json(bad).is_err(), "{bad}");
    }
    let mut c = VmConfig::new("/k");
    c.net.push(NetConfig {
        tap: "much-too-long-tap-name".into(),
        mac: None,
        rx_rate_limiter: None,
        tx_rate_limiter: None,
        id: None,
    });
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("at most 15"), "{e}");
}

#[test]
fn validation() {
    let mut c = VmConfig::new("/k");
    assert!(c.validate().is_ok());
    c.cpus = 0;
    assert!(matches!(c.validate(), Err(ConfigError::NoCpus)));
    c.cpus = 1000;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("more than hearth supports: at most 254"), "{e}");
    c.cpus = 254;
    assert!(c.validate().is_ok());
    c.cpus = 1;
    c.cmdline = "x".repeat(4096);
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("4096 bytes; the limit is 4095 bytes"), "{e}");
    c.cmdline = "x".repeat(4095);
    assert!(c.validate().is_ok());
    c.cmdline = DEFAULT_CMDLINE.into();
    c.memory = 1 << 20;
    assert!(matches!(c.validate(), Err(ConfigError::MemoryTooSmall(_))));
    c.memory = DEFAULT_MEMORY;
    c.kernel = PathBuf::new();
    assert!(matches!(c.validate(), Err(ConfigError::NoKernel)));
}

#[test]
fn config_file_paths_are_relative_to_the_file() {
    let tmp = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hearth-cfg-").unwrap();
    let file = tmp.as_path().join("vm.json");
    std::fs::write(
        &file,
        r#"{"kernel": "k", "initrd": "sub/i", "serial_out": "/abs/out",
            "disks": [{"path": "d.img"}], "api_sock": "api",
            "vsock": {"cid": 3, "socket": "v.sock"}}"#,
    )
    .unwrap();
    let c = VmConfig::from_file(&file).unwrap();
    let d = tmp.as_path();
    assert_eq!(c.kernel, d.join("k"));
    assert_eq!(c.initrd, Some(d.join("sub/i")));
    assert_eq!(c.serial_out, Some(PathBuf::from("/abs/out")));
    assert_eq!(c.disks[0].path, d.join("d.img"));
    assert_eq!(c.api_sock, Some(d.join("api")));
    assert_eq!(c.vsock.unwrap().socket, d.join("v.sock"));
    // No kernel in the file: accepted here, supplied by --kernel later.
    std::fs::write(&file, r#"{"cpus": 2}"#).unwrap();
    let c = VmConfig::from_file(&file).unwrap();
    assert_eq!(c.kernel, PathBuf::new());
    assert_eq!(c.cpus, 2);
}

#[test]
fn share_specs_and_json() {
    let s = parse_share("/srv/data").unwrap();
    assert_eq!(
        (s.path.to_str(), s.tag.as_str(), s.read_only),
        (Some("/srv/data"), "", true)
    );
    assert_eq!(share_tag(2, &s), "share2");
    let s = parse_share("/srv/data,tag=data,rw").unwrap();
    assert_eq!((s.tag.as_str(), s.read_only), ("data", false));
    assert_eq!(share_tag(0, &s), "data");
    let rel = parse_share("rel").unwrap();
    assert!(rel.path.is_absolute() && rel.path.ends_with("rel"));
    for bad in [
        "",
        ",rw",
        "/x,tag=",
        "/x,bogus",
        &format!("/x,tag={}", "t".repeat(37)),
    ] {
        let e = parse_share(bad).unwrap_err().to_string();
        assert!(e.starts_with("invalid --share"), "{bad}: {e}");
    }
    let c = VmConfig::from_json(
        r#"{"kernel": "k", "shares": [{"path": "/srv", "read_only": true}, {"path": "/w", "tag": "w"}]}"#,
    )
    .unwrap();
    assert_eq!(c.shares.len(), 2);
    assert!(c.shares[0].read_only && !c.shares[1].read_only);
    assert_eq!(share_tag(0, &c.shares[0]), "share0");
}

#[test]
fn vsock_specs() {
    assert_eq!(
        parse_vsock("cid=3,socket=/tmp/vm.sock").unwrap(),
        VsockConfig {
            cid: 3,
            socket: "/tmp/vm.sock".into()
        }
    );
    assert_eq!(
        parse_vsock("socket=/s,cid=4294967294").unwrap().cid,
        4294967294
    );
    for (bad, why) in [
        ("", "cid=N is required"),
        ("socket=/s", "cid=N is required"),
        ("cid=3", "socket=PATH is required"),
        ("cid=3,socket=", "socket is empty"),
        ("cid=2,socket=/s", "cid 2 is reserved"),
        ("cid=0,socket=/s", "reserved"),
        ("cid=4294967295,socket=/s", "reserved"),
        ("cid=-1,socket=/s", "decimal number"),
        ("cid=0x10,socket=/s", "decimal number"),
        ("cid=3,socket=/s,port=5", "unknown option 'port'"),
        ("cid=3,cid=4,socket=/s", "given twice"),
    ] {
        let e = parse_vsock(bad).unwrap_err().to_string();
        assert!(e.starts_with("invalid --vsock"), "{bad}: {e}");
        assert!(e.contains(why), "{bad}: {e}");
    }
    let c =
        VmConfig::from_json(r#"{"kernel": "/k", "vsock": {"cid": 3, "socket": "/tmp/vm.sock"}}"#)
            .unwrap();
    assert_eq!(c.vsock.as_ref().unwrap().socket, Path::new("/tmp/vm.sock"));
    assert!(VmConfig::from_json(r#"{"kernel": "/k", "vsock": {"cid": 3}}"#).is_err());
    assert!(VmConfig::from_json(
        r#"{"kernel": "/k", "vsock": {"cid": 3, "socket": "/s", "uds": 1}}"#
    )
    .is_err());
    let mut c = VmConfig::new("/k");
    c.vsock = Some(VsockConfig {
        cid: 1,
        socket: "/s".into(),
    });
    assert!(matches!(c.validate(), Err(ConfigError::VsockCid(1))));
}
