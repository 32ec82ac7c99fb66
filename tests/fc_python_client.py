"""Drives hearth's API with firecracker-python (PyPI), a third-party Firecracker client.

Used by tests/fc_api.rs: python fc_python_client.py ACTION SOCKET [ARGS...]
"""
import sys

from firecracker.api import Api


def main():
    action, sock = sys.argv[1], sys.argv[2]
    api = Api(sock)
    info = api.describe.get().json()
    assert info["app_name"] == "Firecracker", info
    if action == "boot":
        kernel, args = sys.argv[3], sys.argv[4]
        api.machine_config.put(vcpu_count=1, mem_size_mib=64, smt=False)
        api.boot.put(kernel_image_path=kernel, boot_args=args)
        api.actions.put(action_type="InstanceStart")
        assert api.describe.get().json()["state"] == "Running"
    elif action == "pause-resume":
        api.vm.patch(state="Paused")
        assert api.describe.get().json()["state"] == "Paused"
        api.vm.patch(state="Resumed")
        assert api.describe.get().json()["state"] == "Running"
    elif action == "snapshot":
        api.vm.patch(state="Paused")
        api.create_snapshot.put(snapshot_type="Full", snapshot_path=sys.argv[3],
                                mem_file_path=sys.argv[4])
    elif action == "load":
        api.load_snapshot.put(snapshot_path=sys.argv[3],
                              mem_backend={"backend_type": "File", "backend_path": sys.argv[4]},
                              resume_vm=True)
    else:
        raise SystemExit(f"unknown action {action}")
    api.close()


if __name__ == "__main__":
    main()
