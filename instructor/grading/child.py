"""The process that runs ONE submission's code — copied into its sandbox as ``_grade_child.py`` (with ``_wire.py``
and ``_child_errors.py``) and started there by the grader (``remote.py``):

    python -S _grade_child.py FD_IN FD_OUT MEMORY_MB

It holds no test, no expected value and no reference code: it only does what the grader asks, one request at a
time over two pipes (``wire.py`` messages), and sends back raw outputs, which the grader scores in its own process.

* ``import``: import the student's ``captioning.models``;
* ``build``: build a student class with its own ``__init__`` (sub-module classes named in ``record`` replaced by a
  stand-in that records its constructor arguments and builds the layers the grader's recipe makes of them) and
  describe it: modules, their settings, weight names and shapes (a description used for hints only, never for
  points);
* ``load``: load the grader's weights into a built object by name, strictly, one top-level module at a time, and
  say which did not load (the grader then judges the object by what its layers compute);
* ``hybrid``: an object of the student's class whose layers are given by the grader (``modules`` + ``state``), whose
  method under test is the student's, and whose graded methods it may call (``remote``) and ``attention`` sub-module
  call back to the grader, which answers them with the reference (so a bug costs only its own region);
* ``call``: run a method or a sub-module (a dotted path) of an object (train/eval mode, seeded, optionally on the
  ``meta`` device; optionally sending back the arguments as they are after the call, to show in-place changes);
* ``exit``.

Standard library and torch only before the student's code is imported; messages about the student's exceptions
name their line in models.py and never quote another file.
"""

import os
import resource
import signal
import sys
import time

from _child_errors import classify, describe, on_alarm  # staged beside this script, like _wire.py

SETTINGS = (
    "in_features",
    "out_features",
    "input_size",
    "hidden_size",
    "num_embeddings",
    "embedding_dim",
    "padding_idx",
    "num_features",
    "eps",
    "momentum",
    "affine",
    "track_running_stats",
    "p",
    "inplace",
    "dim",
    "normalized_shape",
)


def _vm_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Server:
    def __init__(self, fd_in, fd_out, models_path):
        import _wire
        import torch
        from torch import nn

        self.torch, self.nn, self.wire = torch, nn, _wire
        self.fd_in, self.fd_out, self.models_path = fd_in, fd_out, models_path
        self.reader, self.pending = _wire.Reader(), []
        self.objects, self.stu, self.own = {}, None, {}

    # ------------------------------------------------------------------------------------------------ messages
    def send(self, value):
        self.wire.write_message(self.fd_out, value)

    def receive(self):
        while not self.pending:
            data = os.read(self.fd_in, 1 << 16)
            if not data:
                os._exit(0)  # the grader went away
            self.pending.extend(self.reader.feed(data))
        return self.pending.pop(0)

    def refcall(self, oid, path, args, kwargs, train):
        """Ask the grader to run the reference's ``path`` (a method or sub-module of object ``oid``)."""
        self.send(
            {
                "op": "refcall",
                "id": oid,
                "path": path,
                "args": tuple(args),
                "kwargs": dict(kwargs),
                "train": bool(train),
            }
        )
        answer = self.receive()
        if not isinstance(answer, dict) or not answer.get("ok"):
            raise RuntimeError(
                f"the reference {path} could not run on these inputs: "
                f"{answer.get('message') if isinstance(answer, dict) else answer}"
            )
        return answer["value"]

    def serve(self):
        signal.signal(signal.SIGALRM, on_alarm)
        signal.signal(signal.SIGPROF, on_alarm)
        while True:
            req = self.receive()
            if not isinstance(req, dict) or req.get("op") == "exit":
                return
            limit = float(req.get("limit", 20))  # wall clock: the grader's backstop
            cpu = float(req.get("cpu_limit", limit))  # CPU time of this process (all its threads)
            try:
                signal.setitimer(signal.ITIMER_PROF, cpu)
                signal.setitimer(signal.ITIMER_REAL, limit)
                value = getattr(self, "op_" + str(req.get("op")))(req)
                self._timers_off()
                reply = {"ok": True, "value": value}
            except BaseException as e:  # noqa: BLE001 - anything the student's code does
                self._timers_off()
                reply = {"ok": False, "kind": classify(e), "message": describe(e, self.models_path, limit, cpu)}
            self.send({"reply": reply})

    @staticmethod
    def _timers_off():
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)

    # ------------------------------------------------------------------------------------------------------ ops
    def op_import(self, req):
        import captioning.models as stu

        if os.path.abspath(stu.__file__) != self.models_path:
            raise ImportError(f"captioning.models came from {stu.__file__}, not the submission")
        self.stu = stu
        return None

    def _class(self, name):
        cls = getattr(self.stu, name, None)
        if not isinstance(cls, type):
            raise AttributeError(f"models.py has no class {name}")
        return cls

    def op_build(self, req):
        """Build with the student's __init__; describe the object."""
        torch = self.torch
        cls = self._class(req["cls"])
        recorded, saved = [], {}
        for name in req.get("record", ()):
            saved[name] = getattr(self.stu, name, None)
            setattr(self.stu, name, self._recorder(name, recorded, req.get("recipes", {}).get(name)))
        try:
            torch.manual_seed(0)
            obj = cls(*req.get("args", ()), **req.get("kwargs", {}))
        finally:
            for name, v in saved.items():
                setattr(self.stu, name, v)
        oid = len(self.objects)
        self.objects[oid] = obj
        return {
            "id": oid,
            "modules": self._describe(obj),
            "recorded": recorded,
            "state": {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in obj.state_dict().items()},
        }

    def _recorder(self, name, recorded, recipe=None):
        """A stand-in for the student's class ``name`` inside another class's ``__init__``: it records the
        arguments and, with a ``recipe`` ({"params": [names], "layers": [[name, nn kind, {keyword: "$param" or a
        value}]]}), builds the reference's layers from them, so that the grader's weights load into it only when
        the arguments were right (a bug in the student's own ``name`` costs only its own region)."""
        nn = self.nn

        class Recorder(nn.Module):
            def __init__(self, *args, **kwargs):
                super().__init__()
                recorded.append({"cls": name, "args": tuple(args), "kwargs": dict(kwargs)})
                if not recipe:
                    return
                params = list(recipe["params"])
                bound = dict(zip(params, args))
                if len(args) > len(params) or set(kwargs) - set(params) or set(bound) & set(kwargs):
                    return  # arguments that do not fit: no layers (the grader says why)
                bound.update(kwargs)
                try:
                    for lname, kind, kw in recipe["layers"]:
                        kw = {k: bound[v[1:]] if isinstance(v, str) and v.startswith("$") else v for k, v in kw.items()}
                        self.add_module(lname, getattr(nn, kind)(**kw))
                except Exception:  # noqa: BLE001 - e.g. a missing argument, a float size
                    pass

        Recorder.__name__ = Recorder.__qualname__ = name
        return Recorder

    def _describe(self, obj):
        nn = self.nn
        out = []
        for name, m in obj.named_modules():
            if not name:
                continue
            torch_bases = [k.__name__ for k in type(m).__mro__ if k.__module__.startswith("torch.nn")]
            settings = {}
            for key in SETTINGS:
                v = getattr(m, key, None) if key in vars(m) else None
                if isinstance(v, (bool, int, float)) or (key == "normalized_shape" and isinstance(v, tuple)):
                    settings[key] = v
            if isinstance(m, (nn.Linear, nn.LSTMCell)):
                settings["bias"] = getattr(m, "bias", None) is not None or getattr(m, "bias_ih", None) is not None
            out.append({"name": name, "type": type(m).__name__, "torch": torch_bases, "settings": settings})
        return out

    def op_load(self, req):
        """Load ``state`` into object ``id`` by name, strictly, one top-level module at a time (so that a wrong
        sub-module does not hide the others): {"problems": {module: why}, "extra": [top-level modules holding
        weights the grader did not send]}."""
        obj = self.objects[req["id"]]
        groups = {}
        for key, value in req["state"].items():
            top, _, rest = key.partition(".")
            groups.setdefault(top, {})[rest] = value
        problems = {}
        for top, sub in groups.items():
            m = obj._modules.get(top)
            if m is None:
                problems[top] = "missing"
                continue
            try:
                m.load_state_dict(sub, strict=True)
            except Exception as e:  # noqa: BLE001 - a wrong name, shape or layer kind
                problems[top] = " ".join(str(e).split())[:400]
        extra = sorted({k.partition(".")[0] for k in obj.state_dict()} - set(groups))
        return {"problems": problems, "extra": extra}

    def op_hybrid(self, req):
        """The student's class, the grader's layers and weights, the reference's other methods over the pipe."""
        nn = self.nn
        name = req["cls"]
        cls = self._class(name)
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        oid = len(self.objects)
        server = self
        for key, value in req.get("attrs", {}).items():
            object.__setattr__(obj, key, value)
        for mname, kind, kwargs in req["modules"]:
            if kind == "remote":
                obj._modules[mname] = _ref_module(nn, server, oid, mname)
            else:
                obj._modules[mname] = getattr(nn, kind)(**kwargs)
        state = req["state"]
        missing, _ = obj.load_state_dict(state, strict=False)
        if set(missing) & set(state):
            raise RuntimeError(f"could not load {sorted(set(missing) & set(state))}")
        theirs = self._own(name, req.get("own"))
        if theirs is not None:  # their extra layers and attributes (e.g. self.softmax) for their method to use
            for k, m in theirs._modules.items():
                obj._modules.setdefault(k, m)
            for k, v in vars(theirs).items():
                if not k.startswith("_") and k not in vars(obj) and k != "training":
                    obj.__dict__[k] = v
        overrides = {}
        for method in req.get("remote", ()):
            overrides[method] = _ref_method(server, oid, method)
        obj.__class__ = type(name, (cls,), overrides)
        self.objects[oid] = obj
        return {"id": oid}

    def _own(self, name, build):
        """The student's own object of class ``name`` built once with ``build`` = [args, kwargs] (None when their
        __init__ fails: that is graded elsewhere)."""
        if build is None:
            return None
        if name not in self.own:
            self.own[name] = None
            try:
                self.torch.manual_seed(0)
                self.own[name] = self._class(name)(*build[0], **build[1])
            except Exception:  # noqa: BLE001
                pass
        return self.own[name]

    def op_call(self, req):
        torch = self.torch
        obj = self.objects[req["id"]]
        args = list(req.get("args", ()))
        if req.get("device") == "meta":
            obj.to("meta")
            keep = set(req.get("cpu_args", ()))
            args = [a.to("meta") if torch.is_tensor(a) and i not in keep else a for i, a in enumerate(args)]
        obj.train(bool(req.get("train")))
        fn = obj
        for part in str(req.get("method", "__call__")).split("."):  # a method, or a sub-module by its path
            if part != "__call__":
                fn = getattr(fn, part)
        if req.get("seed") is not None:
            torch.manual_seed(int(req["seed"]))
        with torch.set_grad_enabled(bool(req.get("grad"))):
            out = fn(*args)
        if req.get("return_args"):
            return out, tuple(args)  # the arguments as the call left them (an in-place layer changes them)
        return out  # encoded at once (wire.encode detaches and copies the tensors)


def _ref_module(nn, server, oid, path):
    class RefModule(nn.Module):  # a sub-module the grader runs with the reference (e.g. attention)
        def forward(self, *args, **kwargs):
            return server.refcall(oid, path, args, kwargs, self.training)

    return RefModule()


def _ref_method(server, oid, method):
    def call(self, *args, **kwargs):  # a graded method the grader runs with the reference
        return server.refcall(oid, method, args, kwargs, self.training)

    call.__name__ = method
    return call


def main():
    fd_in, fd_out, memory_mb = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    here = os.path.dirname(os.path.abspath(__file__))
    models_path = os.path.join(here, "captioning", "models.py")
    if sys.path[0] != here:
        sys.path.insert(0, here)
    import torch

    torch.set_num_threads(1)
    server = Server(fd_in, fd_out, models_path)
    import captioning.internals.errors  # noqa: F401  (the sandbox's package, not an installed one)

    sandbox_errors = os.path.join(here, "captioning", "internals")  # where the sandbox holds errors.py
    if os.path.dirname(os.path.abspath(captioning.internals.errors.__file__)) != sandbox_errors:
        server.send({"fatal": f"captioning was imported from {captioning.internals.errors.__file__}, not the sandbox"})
        return
    # From here on the student's code may run: tighten the address-space limit to what is mapped now plus the
    # submission's allowance (one process; the sandbox's cgroup limits all of them together).
    vm = _vm_bytes()
    if memory_mb > 0 and vm:
        limit = vm + memory_mb * 2**20
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    server.send({"ready": True, "vm_mb": None if vm is None else round(vm / 2**20), "t": time.time()})
    server.serve()
    os._exit(0)  # skip atexit handlers the student's code may have registered


if __name__ == "__main__":
    main()
