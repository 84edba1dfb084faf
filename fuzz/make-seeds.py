#!/usr/bin/env python3
"""Writes the seed inputs of the archive fuzz targets (fuzz/seeds/{layer,add,
load,image_json}): small layer tars in each tar dialect, with whiteouts,
links and paths that try to leave the root; the same compressed as ADD
takes them; docker and OCI archives with valid digests (docker save, docker
>= 25 and OCI layouts, a nested index); and image configs and manifests.

Run from anywhere: python3 fuzz/make-seeds.py. Output is deterministic.
"""
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
MTIME = 1_700_000_000


def entry(name, kind=tarfile.REGTYPE, data=b"", mode=0o644, link="", pax=None,
          dev=(0, 0)):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.devmajor, info.devminor = dev
    if pax:
        info.pax_headers = pax
    return info, data


def tar(entries, fmt=tarfile.PAX_FORMAT):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as t:
        for info, data in entries:
            t.addfile(info, io.BytesIO(data) if info.size else None)
    # Without tarfile's padding to 10 KiB: the data, then two zero blocks.
    data = out.getvalue().rstrip(b"\0")
    return data + b"\0" * (-len(data) % 512 + 1024)


def gz(data):
    return gzip.compress(data, mtime=0)


LAYERS = {
    # A plain layer: directories, files, links within it.
    "basic": tar([
        entry("etc/", tarfile.DIRTYPE, mode=0o755),
        entry("etc/hosts", data=b"127.0.0.1 localhost\n"),
        entry("usr/bin/", tarfile.DIRTYPE, mode=0o755),
        entry("usr/bin/sh", data=b"#!\n", mode=0o755),
        entry("bin", tarfile.SYMTYPE, link="usr/bin"),
        entry("usr/bin/ash", tarfile.LNKTYPE, link="usr/bin/sh"),
        entry("tmp/", tarfile.DIRTYPE, mode=0o1777),
    ], tarfile.USTAR_FORMAT),
    # Whiteouts of lower entries and an opaque directory.
    "whiteouts": tar([
        entry("etc/.wh.passwd"),
        entry("a/.wh..wh..opq"),
        entry("a/new", data=b"new"),
        entry(".wh.l"),
        entry("up/.wh.f"),
    ]),
    # Writing through the lower layer's symlinks: up -> ../outside,
    # top -> /, l -> a; all must resolve inside the root.
    "through-lower-links": tar([
        entry("up/f", data=b"escaped"),
        entry("up/d/", tarfile.DIRTYPE, mode=0o777),
        entry("top/etc/f", data=b"escaped"),
        entry("l/b/x", data=b"x"),
        entry("up/etc", tarfile.LNKTYPE, link="etc/passwd"),
    ]),
    # Symlinks the layer makes itself, then entries below them.
    "own-links": tar([
        entry("e", tarfile.SYMTYPE, link="../outside"),
        entry("e/f", data=b"escaped"),
        entry("e/d/", tarfile.DIRTYPE, mode=0o700),
        entry("s", tarfile.SYMTYPE, link="/etc"),
        entry("s/x", data=b"x"),
        entry("h", tarfile.LNKTYPE, link="e/f"),
    ]),
    # A directory replaced by a symlink after entries were made below it.
    "dir-then-link": tar([
        entry("b/", tarfile.DIRTYPE, mode=0o755),
        entry("b/etc/", tarfile.DIRTYPE, mode=0o700),
        entry("b", tarfile.SYMTYPE, link="../outside"),
    ]),
    # PAX: long names, xattrs, times with fractions, ids beyond ustar.
    "pax": tar([
        entry("d" * 120 + "/", tarfile.DIRTYPE),
        entry("d" * 120 + "/" + "f" * 110, data=b"long",
              pax={"SCHILY.xattr.user.k": "v", "mtime": "1700000000.5",
                   "uid": "3000000", "gid": "3000000"}),
        entry("cap", data=b"c", pax={"SCHILY.xattr.security.capability": "\x01"}),
        entry("l" * 20, tarfile.SYMTYPE, link="t" * 150),
    ]),
    # GNU long names and links; a fifo and devices.
    "gnu": tar([
        entry("g" * 130, data=b"gnu"),
        entry("k" * 10, tarfile.SYMTYPE, link="z" * 140),
        entry("fifo", tarfile.FIFOTYPE),
        entry("null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
        entry("loop", tarfile.BLKTYPE, mode=0o660, dev=(7, 0)),
    ], tarfile.GNU_FORMAT),
}


def write(target, name, data):
    with open(os.path.join(SEEDS, target, name), "wb") as f:
        f.write(data)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def config(layers):
    return json.dumps({
        "architecture": "amd64", "os": "linux", "created": "2026-11-18T11:06:40Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "ExposedPorts": {"80/tcp": {}},
                   "Labels": {"a": "b"}, "WorkingDir": "/", "Hostname": "x"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha(l) for l in layers]},
        "history": [{"created": "2026-11-18T11:06:40Z", "created_by": "ADD x /"}],
    }, sort_keys=True).encode()


def files_tar(files):
    """A tar of an archive's files: name -> bytes, or ("link", target)."""
    entries = []
    dirs = set()
    for name in sorted(files):
        parts = name.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i]) + "/"
            if d not in dirs:
                dirs.add(d)
                entries.append(entry(d, tarfile.DIRTYPE, mode=0o755))
        v = files[name]
        if isinstance(v, tuple):
            entries.append(entry(name, tarfile.SYMTYPE, link=v[1]))
        else:
            entries.append(entry(name, data=v))
    return tar(entries, tarfile.USTAR_FORMAT)


def docker_archive(layers, modern=False):
    cfg = config(layers)
    files = {}
    if modern:
        # docker >= 25: blobs/sha256 plus an OCI index, manifest.json naming blobs.
        names = []
        for l in layers:
            files["blobs/sha256/" + sha(l)] = l
            names.append("blobs/sha256/" + sha(l))
        files["blobs/sha256/" + sha(cfg)] = cfg
        cfg_name = "blobs/sha256/" + sha(cfg)
        files["oci-layout"] = b'{"imageLayoutVersion":"1.0.0"}'
    else:
        names = []
        for l in layers:
            files[sha(l) + "/layer.tar"] = l
            names.append(sha(l) + "/layer.tar")
        # A second name for the first layer, as a symlink (docker save does).
        files["aa/layer.tar"] = ("link", "../" + names[0])
        cfg_name = sha(cfg) + ".json"
        files[cfg_name] = cfg
        files["repositories"] = b'{"fuzz":{"latest":"' + sha(cfg).encode() + b'"}}'
    files["manifest.json"] = json.dumps([
        {"Config": cfg_name, "RepoTags": ["fuzz:latest", "example.com/a/b:1"], "Layers": names},
    ]).encode()
    return files_tar(files)


def descriptor(media_type, data, **annotations):
    d = {"mediaType": media_type, "digest": "sha256:" + sha(data), "size": len(data)}
    if annotations:
        d["annotations"] = annotations
    return d


def oci_archive(layers, nested=False):
    blobs = {}
    cfg = config(layers)
    blobs[sha(cfg)] = cfg
    layer_descs = []
    for l in layers:
        z = gz(l)
        blobs[sha(z)] = z
        layer_descs.append(descriptor("application/vnd.oci.image.layer.v1.tar+gzip", z))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", cfg),
        "layers": layer_descs,
    }).encode()
    blobs[sha(manifest)] = manifest
    top = descriptor("application/vnd.oci.image.manifest.v1+json", manifest,
                     **{"org.opencontainers.image.ref.name": "fuzz:latest"})
    if nested:
        inner = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [dict(descriptor("application/vnd.oci.image.manifest.v1+json",
                                          manifest),
                               platform={"architecture": "amd64", "os": "linux"})],
        }).encode()
        blobs[sha(inner)] = inner
        top = descriptor("application/vnd.oci.image.index.v1+json", inner,
                         **{"io.containerd.image.name": "example.com/fuzz:nested"})
    files = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',
             "index.json": json.dumps({"schemaVersion": 2, "manifests": [top]}).encode()}
    for h, b in blobs.items():
        files["blobs/sha256/" + h] = b
    return files_tar(files), manifest, cfg


def main():
    for name, data in LAYERS.items():
        write("layer", name, data)
    write("add", "plain", LAYERS["basic"])
    write("add", "gzip", gz(LAYERS["own-links"]))
    write("add", "bzip2", bz2.compress(LAYERS["whiteouts"]))
    write("add", "xz", lzma.compress(LAYERS["dir-then-link"]))
    write("add", "pax", LAYERS["pax"])
    small = [LAYERS["basic"], LAYERS["whiteouts"]]
    write("load", "docker", docker_archive(small))
    write("load", "docker-25", docker_archive([LAYERS["basic"]], modern=True))
    oci, manifest, cfg = oci_archive([LAYERS["basic"]])
    write("load", "oci", oci)
    write("load", "oci-nested", oci_archive([LAYERS["whiteouts"]], nested=True)[0])
    write("load", "docker.gz", gz(docker_archive([LAYERS["whiteouts"]])))
    write("image_json", "config", cfg)
    write("image_json", "manifest", manifest)
    write("image_json", "descriptor", json.dumps(
        descriptor("application/vnd.oci.image.manifest.v1+json", b"x",
                   **{"org.opencontainers.image.ref.name": "a"})).encode())
    write("image_json", "config-full", json.dumps({
        "architecture": "arm64", "variant": "v8", "os": "linux", "author": "me",
        "created": "2026-11-18T12:06:40.123456789+01:00",
        "config": {"User": "1000:1000", "Env": ["A=1"], "Entrypoint": ["/bin/sh", "-c"],
                   "Cmd": None, "Volumes": {"/data": {}}, "StopSignal": "SIGTERM",
                   "Healthcheck": {"Test": ["CMD", "true"], "Interval": 30000000000,
                                   "Retries": 3},
                   "Shell": ["/bin/sh", "-c"], "OnBuild": ["RUN x"], "ArgsEscaped": True,
                   "Unknown": 1.5e300},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]},
        "history": [{"empty_layer": True, "comment": "buildkit.dockerfile.v0"}],
        "moby.buildkit.buildinfo.v1": "e30=", "float": 0.1,
    }).encode())


if __name__ == "__main__":
    main()
