"""`vlm-classify run EXPERIMENT.toml`: every step of an experiment in dependency order, each
skipped when it already finished with the same inputs, resumed when it was interrupted, and run
again (saying why) when an input it depends on changed.

Steps: `prepare`, `finetune:ARM` (and `deploy:ARM` for Azure), `classify:ARM`, `latency:ARM`,
`report`. A finished step is recorded in `OUT/run.json` with the inputs it depended on (an
upstream step's outputs among them: the sample's identity, a fine-tuned model's id), written
atomically after each step. The steps themselves are the resumable library functions the single
commands use, so an interrupted step picks up where it stopped and nothing is bought twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .arms import arm_dir
from .backends import registry
from .backends.base import LocalSettings
from .errors import UserError
from .experiment import ArmSpec, Experiment, load_experiment
from .files import write_text_atomic

STATE = "run.json"
SOURCE = "source"
"""Where a `generated` dataset is written, under the run's folder."""


class RunUI(Protocol):
    """What a run tells its user (the CLI prints it; tests record it)."""

    def step(self, step: str, action: str, why: str) -> None:
        """A step starts (`run`), is skipped (`skip`) or would run (`plan`)."""
        ...

    def status(self, message: str) -> None: ...

    def progress(self, step: str, done: int, total: int | None) -> None: ...


class SilentUI:
    def step(self, step: str, action: str, why: str) -> None:
        pass

    def status(self, message: str) -> None:
        pass

    def progress(self, step: str, done: int, total: int | None) -> None:
        pass


@dataclass
class RunResult:
    out: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    report: Path | None = None
    estimate: list[dict[str, Any]] = field(default_factory=list)
    emulated: bool = False
    errors: dict[str, int] = field(default_factory=dict)
    """Arms with items that failed for good in this run (the next run asks for them again)."""


class State:
    """`OUT/run.json`: each step's inputs when it started and its outputs when it finished."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            doc = {}
        except (OSError, ValueError):
            raise UserError(
                f"{path} is unreadable: delete it to run every step again (nothing recorded "
                "elsewhere is lost: finished answers and jobs are reused)"
            ) from None
        self.steps: dict[str, dict[str, Any]] = dict(doc.get("steps", {}))

    def get(self, step: str) -> dict[str, Any] | None:
        return self.steps.get(step)

    def started(self, step: str, inputs: dict[str, Any]) -> None:
        self.steps[step] = {"inputs": inputs, "status": "started", "started_at": time.time()}
        self.save()

    def finished(
        self, step: str, inputs: dict[str, Any], outputs: dict[str, Any], status: str = "finished"
    ) -> None:
        """`status`: `finished`, or `errors` (it ended, some items failed: the next run asks
        for them again)."""
        self.steps[step] = {
            "inputs": inputs,
            "outputs": outputs,
            "status": status,
            "finished_at": time.time(),
        }
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps({"version": 1, "steps": self.steps}, indent=2))


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _changed(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The keys whose values differ, nested ones dotted (`latency.requests`)."""
    out: list[str] = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed(a, b, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


class Runner:
    """Runs one experiment's steps (see the module docstring)."""

    def __init__(
        self,
        exp: Experiment,
        base: Path,
        out: Path,
        ui: RunUI,
        dry_run: bool = False,
        only: str | None = None,
    ) -> None:
        self.exp = exp
        self.base = base
        self.out = out
        self.ui = ui
        self.dry_run = dry_run
        self.only = only
        self.state = State(out / STATE)
        self.result = RunResult(out=out)
        self.current: str | None = None
        """The step running now (for the line an interrupt prints)."""
        self.models: dict[str, str] = {}
        """Each arm's model string, once known (a fine-tuned arm's after its job)."""

    # --- the plan ------------------------------------------------------------------------------

    def steps(self) -> list[str]:
        names = ["prepare", *(["estimate"] if self._priced_arms() else [])]
        for arm in self.exp.arm:
            if arm.finetune is not None:
                names.append(f"finetune:{arm.name}")
                if arm.deploy is not None:
                    names.append(f"deploy:{arm.name}")
        names += [f"classify:{a.name}" for a in self.exp.arm]
        names += [f"latency:{a}" for a in (self.exp.latency.arms if self.exp.latency else [])]
        names += ["curve"] if self.exp.curve is not None else []
        return [*names, "report"]

    def check_only(self) -> None:
        if self.only is None:
            return
        steps = self.steps()
        kinds = {s.partition(":")[0] for s in steps}
        if self.only not in steps and self.only not in kinds:
            raise UserError(
                f"--only {self.only!r}: not a step of this experiment; its steps are "
                f"{', '.join(steps)} (or a kind: {', '.join(sorted(kinds))})"
            )

    def selected(self, step: str) -> bool:
        return self.only is None or step == self.only or step.partition(":")[0] == self.only

    def needs(self, step: str) -> set[str]:
        """The steps whose outputs `step` reads, directly or not."""
        kind, _, arm = step.partition(":")
        steps = self.steps()
        direct: set[str] = set()
        if kind in ("finetune", "classify", "latency"):
            direct.add("prepare")
        if kind == "deploy":
            direct.add(f"finetune:{arm}")
        if kind in ("classify", "latency"):
            direct |= {s for s in (f"finetune:{arm}", f"deploy:{arm}") if s in steps}
        if kind == "curve":
            direct.add("prepare")
        if kind == "report":
            direct |= {s for s in steps if s.startswith(("classify:", "latency:", "curve"))}
        out = set(direct)
        for s in direct:
            out |= self.needs(s)
        return out

    @property
    def needed(self) -> set[str]:
        """With --only: the steps the selected ones need (they must have run before)."""
        out: set[str] = set()
        for s in self.steps():
            if self.selected(s):
                out |= self.needs(s)
        return out

    # --- running ---------------------------------------------------------------------------

    def run(self) -> RunResult:
        self.check_only()
        self._check_before_anything()
        sample = self._step("prepare", self._prepare_inputs(), self._prepare)
        emulator = self._emulator() if self.exp.emulator is not None and sample else None
        with emulator or contextlib.nullcontext():
            if self.dry_run:
                self._estimate()
            elif self._priced_arms():
                self._step("estimate", self._estimate_inputs(sample), lambda _r: self._estimate())
            for arm in self.exp.arm:
                if arm.finetune is not None:
                    self._finetune(arm, sample)
                else:
                    assert arm.model is not None
                    self.models[arm.name] = arm.model
            for arm in self.exp.arm:
                self._classify(arm, sample)
            for name in self.exp.latency.arms if self.exp.latency else []:
                self._latency(name, sample)
            if self.exp.curve is not None:
                self._curve(sample)
            self._report(sample)
        return self.result

    def _step(
        self,
        step: str,
        inputs: dict[str, Any] | None,
        fn: Callable[[bool], dict[str, Any]],
        always: bool = False,
    ) -> dict[str, Any] | None:
        """Run `fn(rerun)` unless the step finished with these inputs; return its outputs (None:
        not known in a dry run, or not selected by --only and never run)."""
        rec = self.state.get(step)
        done = rec is not None and rec.get("status") == "finished"
        if not self.selected(step):  # --only another step
            if done and rec is not None:
                return dict(rec.get("outputs") or {})
            if step in self.needed:
                raise UserError(
                    f"--only {self.only}: it needs step {step}, which has not run yet: run "
                    "without --only first"
                )
            return None
        if inputs is None:  # depends on a step a dry run does not run
            self.ui.step(step, "plan", "after the steps it depends on")
            self.result.planned.append(step)
            return None
        same = rec is not None and rec.get("inputs") == inputs
        if done and same and not always:
            assert rec is not None
            self.ui.step(step, "skip", "done")
            self.result.skipped.append(step)
            return dict(rec.get("outputs") or {})
        if rec is None:
            why = "new"
        elif same:
            why = {
                "errors": "some items failed before: asking for them again",
                "started": "interrupted before: resuming",
            }.get(str(rec.get("status")), "runs every time")
        else:
            why = "changed: " + ", ".join(_changed(rec.get("inputs", {}), inputs))
        rerun = rec is not None and not same
        if self.dry_run:
            self.ui.step(step, "plan", why)
            self.result.planned.append(step)
            return None
        self.ui.step(step, "run", why)
        self.state.started(step, inputs)
        self.current = step
        outputs = fn(rerun)
        failed = int(outputs.get("errors") or 0)
        self.state.finished(step, inputs, outputs, "errors" if failed else "finished")
        if failed:
            self.result.errors[step] = failed
        self.result.ran.append(step)
        return outputs

    def _check_before_anything(self) -> None:
        """Packages and credentials for every arm, before anything is prepared or uploaded."""
        from .backends.openai.chat import make_client

        for arm in self.exp.arm:
            for model in filter(None, (arm.model, arm.finetune.base if arm.finetune else None)):
                ref, provider = registry.parse(model)
                missing = [p for p in provider.needs if _missing(p)]
                if missing:
                    provider.load()  # the one line naming the extra
                if provider.kind == "remote" and self.exp.emulator is None:
                    make_client(ref)  # a missing key or endpoint: one line, now
        curve = self.exp.curve
        if curve is not None:
            ref, provider = registry.parse(curve.model)
            if provider.kind == "remote" and not curve.yes:
                raise UserError(
                    f"[curve] fine-tunes {curve.model} through the API at each of "
                    f"{len(curve.shots)} sizes, which costs money: add yes = true to [curve] "
                    "(see the cost first with --dry-run and `vlm-classify curve ... ` without --yes)"
                )
            if provider.kind == "remote" and self.exp.emulator is None:
                make_client(ref)

    # --- prepare -----------------------------------------------------------------------------

    def _source(self) -> Path | str:
        src = self.exp.dataset.source
        if src == "generated":
            return self.out / SOURCE
        if src == "stanford-dogs":
            return src
        path = Path(src).expanduser()
        return path if path.is_absolute() else (self.base / path)

    def _prepare_inputs(self) -> dict[str, Any]:
        return {"dataset": self.exp.dataset.model_dump(mode="json"), "source": str(self._source())}

    def _prepare(self, _rerun: bool) -> dict[str, Any]:
        from .dataset.manifest import load_sample
        from .dataset.prepare import PrepareOptions, prepare
        from .dataset.synthetic import make_sample

        d = self.exp.dataset
        options = PrepareOptions(
            per_class=d.per_class,
            split=d.split,
            sampling=d.sampling,
            seed=d.seed,
            max_side=d.max_side,
            strict=d.strict,
        )
        source = self._source()
        if d.source == "generated":
            count = d.images_per_class or options.count
            self.ui.status(f"generating {d.classes or 10} classes x {count} images in {source}")
            make_sample(Path(source), classes=d.classes or 10, per_class=count)
        try:
            result = prepare(
                source,
                self.out,
                options,
                progress=lambda phase, done, total: self.ui.progress(
                    f"prepare ({phase})", done, total
                ),
            )
        except UserError as e:  # prepare names its command-line flags: name the file's keys
            text = str(e).replace(
                "lower --split or drop --strict", "lower [dataset] split or set strict = false"
            )
            raise UserError(f"[dataset] {text}") from None
        for w in result.warnings:
            self.ui.status(f"warning: {w}")
        sample = load_sample(self.out)
        self.ui.status(
            f"{sum(result.counts.values())} images, {result.classes} classes "
            f"({', '.join(f'{k} {v}' for k, v in result.counts.items())}), sample {sample.short_id}"
        )
        return {"sample": sample.identity, "items": len(sample.rows)}

    # --- the emulator ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _emulator(self) -> Iterator[None]:
        from .emulator import Emulator, EmulatorConfig
        from .emulator.config import parse_faults

        spec = self.exp.emulator
        assert spec is not None
        config = EmulatorConfig(
            manifests=[self.out],
            accuracy=spec.accuracy,
            ft_accuracy=spec.ft_accuracy,
            latency_profile=_profile(spec.latency_profile, self.base),
            latency_scale=spec.latency_scale,
            batch_seconds=spec.batch_seconds,
            ft_seconds=spec.ft_seconds,
            faults=parse_faults(spec.faults),
            seed=spec.seed,
            bill_factor=spec.bill_factor,
        )
        with Emulator(config) as emu:
            saved = {k: os.environ.get(k) for k in emu.env()}
            os.environ.update(emu.env())
            self.result.emulated = True
            self.ui.status(
                f"emulator at {emu.base_url}: every cloud number in this run is EMULATED "
                f"(accuracy settings {spec.accuracy:.2f} base, {spec.ft_accuracy:.2f} fine-tuned)"
            )
            try:
                yield
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v

    # --- estimate ----------------------------------------------------------------------------

    def _priced_arms(self) -> list[tuple[ArmSpec, str]]:
        """The cloud arms the shipped prices can estimate, with their base model."""
        out = []
        for arm in self.exp.arm:
            base = arm.finetune.base if arm.finetune else arm.model
            assert base is not None
            if registry.parse(base)[1].kind == "remote" and not base.partition("/")[2].startswith(
                "ft:"
            ):
                out.append((arm, base))
        return out

    def _estimate_inputs(self, sample: dict[str, Any] | None) -> dict[str, Any] | None:
        if sample is None:
            return None
        arms = [a.model_dump(mode="json", by_alias=True) for a, _ in self._priced_arms()]
        return {"sample": sample["sample"], "arms": arms}

    def _estimate(self) -> dict[str, Any]:
        """What the cloud arms will cost, from the prepared sample and the shipped prices: said
        before anything is spent (the `estimate` step; a dry run's figures)."""
        from .estimate import EstimateOptions, estimate
        from .pricing import lifecycle_warnings

        if not (self.out / "manifest.csv").is_file():
            self.ui.status("cost estimate: after prepare (it costs nothing: --only prepare)")
            return {}
        usd: dict[str, float] = {}
        for arm, base in self._priced_arms():
            try:
                est = estimate(
                    self.out,
                    EstimateOptions(
                        model=base,
                        epochs=_int(arm.finetune.epochs if arm.finetune else None, 2),
                        prompt=arm.prompt or "full",
                        detail=arm.detail,
                    ),
                )
            except UserError as e:
                self.ui.status(f"{arm.name}: no estimate ({e})")
                continue
            line, dollars = _estimate_line(est, arm)
            usd[arm.name] = round(dollars, 4)
            self.result.estimate.append({"arm": arm.name, "usd": dollars, **est.to_json()})
            self.ui.status(f"{arm.name}: {line}")
            for w in lifecycle_warnings(
                base,
                "fine-tuned" if arm.finetune else "zero-shot",
                months=self.exp.report.months,
            ):
                self.ui.status(f"{arm.name}: warning: {w}")
        return {"usd": usd}

    # --- fine-tunes and deployments --------------------------------------------------------

    def _finetune(self, arm: ArmSpec, sample: dict[str, Any] | None) -> None:
        spec = arm.finetune
        assert spec is not None
        settings = spec.model_dump(mode="json", by_alias=True)
        inputs = None if sample is None else {"finetune": settings, "sample": sample["sample"]}
        job = f"{arm.name}-ft-{_digest(inputs)}"
        """Its own arm, named by its settings and sample: other settings (or a sample prepared
        again) are another job, never this one."""
        kind = registry.parse(spec.base)[1].kind

        def go(_rerun: bool) -> dict[str, Any]:
            if kind == "local":
                return self._train_local(arm, job)
            return self._train_remote(arm, job)

        outputs = self._step(f"finetune:{arm.name}", inputs, go)
        if outputs is None:
            return
        model = outputs["fine_tuned_model"]
        if arm.deploy is not None:
            deployed = self._step(
                f"deploy:{arm.name}",
                {"deploy": arm.deploy.model_dump(mode="json"), "model": model},
                lambda _r: self._deploy(arm, job),
                always=self.exp.emulator is not None,  # a fresh emulator knows no deployment
            )
            if deployed is None:
                return
            model = deployed["model"]
        elif kind == "remote":
            model = f"{spec.base.partition('/')[0]}/{model}"
        self.models[arm.name] = model

    def _train_remote(self, arm: ArmSpec, job: str) -> dict[str, Any]:
        from .backends.openai.finetune import FinetuneEvent, FinetuneOptions, finetune

        spec = arm.finetune
        assert spec is not None
        options = FinetuneOptions(
            model=spec.base,
            name=job,
            epochs=spec.epochs if spec.epochs is not None else 2,
            lr_multiplier=spec.lr_multiplier if spec.lr_multiplier is not None else 0.5,
            batch_size=spec.batch_size if spec.batch_size is not None else "auto",
            seed=spec.seed,
            suffix=spec.suffix,
            prompt=spec.prompt or arm.prompt or "full",
            detail=spec.detail or arm.detail,
            poll_s=0.5 if self.exp.emulator is not None else 10.0,
        )

        def on_event(ev: FinetuneEvent) -> None:
            if ev.kind in ("status", "job"):
                self.ui.status(ev.message)

        record = finetune(self.out, options, on_event=on_event).record
        if record.get("status") != "succeeded" or not record.get("fine_tuned_model"):
            raise UserError(
                f"fine-tuning job {record.get('job_id')} of arm {arm.name} ended "
                f"{record.get('status')}: see {arm_dir(self.out, job) / 'finetune.json'}"
            )
        return {"job": job, "fine_tuned_model": record["fine_tuned_model"]}

    def _train_local(self, arm: ArmSpec, job: str) -> dict[str, Any]:
        from .training import Epoch, TrainOptions, train_local

        spec = arm.finetune
        assert spec is not None
        options = TrainOptions(
            model=spec.base,
            name=job,
            epochs=_int(spec.epochs, None),
            batch_size=_int(spec.batch_size, None),
            lr=spec.lr,
            lora_rank=spec.lora_rank,
            seed=spec.seed,
            local=self._local(arm, prompt=spec.prompt or arm.prompt),
        )

        def on_epoch(e: Epoch) -> None:
            acc = "" if e.val_accuracy is None else f", val accuracy {e.val_accuracy:.2%}"
            self.ui.status(f"epoch {e.epoch}{acc}")

        record = train_local(self.out, options, on_epoch=on_epoch)
        return {"job": job, "fine_tuned_model": record["fine_tuned_model"]}

    def _deploy(self, arm: ArmSpec, job: str) -> dict[str, Any]:
        from .backends.openai.deploy import DeployOptions, deploy

        spec = arm.deploy
        assert spec is not None
        emulated = self.exp.emulator is not None
        result = deploy(
            self.out,
            DeployOptions(
                job=job,
                deployment=spec.deployment,
                subscription=spec.subscription or ("emulated" if emulated else None),
                resource_group=spec.resource_group or ("emulated" if emulated else None),
                account=spec.account or ("emulated" if emulated else None),
                sku=spec.sku,
                capacity=spec.capacity,
            ),
        )
        if not result.sent:  # the user deploys it: the classify step finds it once it exists
            self.ui.status(
                f"not deployed by this run (deploy has no subscription, resource_group and "
                f"account): deploy it with `{result.command}`, then rerun; until then "
                f"classify:{arm.name} stops with 'deployment {spec.deployment} not found'"
            )
        return {"model": f"azure/{spec.deployment}", "sent": result.sent}

    # --- classify, latency, report -----------------------------------------------------------

    def _local(self, arm: ArmSpec, prompt: Any = None) -> LocalSettings:
        values: dict[str, Any] = {
            "device": arm.device,
            "offline": arm.offline,
            "cpu_price_per_hour": arm.cpu_price_per_hour,
            "gpu_price_per_hour": arm.gpu_price_per_hour,
            "prompt": prompt,
        }
        if arm.batch_size:
            values["batch_size"] = arm.batch_size
        if arm.answer in ("score", "text") and arm.provider == "hf":
            values["answer"] = arm.answer
        return LocalSettings.model_validate(values)

    def _classify(self, arm: ArmSpec, sample: dict[str, Any] | None) -> None:
        model = self.models.get(arm.name)
        inputs = None
        if sample is not None and model is not None:
            inputs = {
                "model": model,
                "settings": arm.model_dump(mode="json", exclude={"finetune", "deploy", "model"}),
                "sample": sample["sample"],
            }

        def go(rerun: bool) -> dict[str, Any]:
            assert model is not None
            return self._run_classify(arm, model, reset=rerun)

        self._step(f"classify:{arm.name}", inputs, go)

    def _run_classify(self, arm: ArmSpec, model: str, reset: bool) -> dict[str, Any]:
        from .classify import ClassifyOptions, classify
        from .runner import RunnerConfig

        local = registry.parse(model)[1].kind == "local"
        options = ClassifyOptions(
            model=model,
            name=arm.name,
            split=arm.split,
            mode=arm.mode if not local else "realtime",
            prompt=arm.prompt or "full",
            answer=arm.answer if arm.answer in ("enum", "text") and not local else "enum",  # type: ignore[arg-type]
            detail=arm.detail,
            logprobs=arm.logprobs,
            limit=arm.limit,
            reset=reset,
            retry_failed=True,  # items an earlier run recorded as failed are asked again
            batch_poll_s=0.5 if self.exp.emulator is not None else 10.0,
            runner=RunnerConfig(concurrency=arm.concurrency, rpm=arm.rpm, tpm=arm.tpm),
            local=self._local(arm, prompt=arm.prompt),
        )
        step = f"classify:{arm.name}"
        result = classify(
            self.out,
            options,
            on_progress=lambda p: self.ui.progress(step, p.done, p.total),
            on_status=self.ui.status,
        )
        t = result.totals
        acc = "n/a" if t["accuracy"] is None else f"{t['accuracy']:.2%}"
        emulated = " (emulated)" if result.emulated else ""
        self.ui.status(f"{arm.name}: accuracy {acc} over {t['answered']} items{emulated}")
        if t["errors"]:
            self.ui.status(
                f"{arm.name}: {t['errors']} of {t['items']} items failed (see the error column "
                f"of {result.arm_dir / 'predictions.csv'}); the next run asks for them again"
            )
        return {
            "accuracy": t["accuracy"],
            "answered": t["answered"],
            "errors": t["errors"],
            "emulated": result.emulated,
        }

    def _latency(self, name: str, sample: dict[str, Any] | None) -> None:
        from .latency import LatencyOptions, measure_latency

        spec = self.exp.latency
        assert spec is not None
        arm = next(a for a in self.exp.arm if a.name == name)
        model = self.models.get(name)
        inputs = None
        if sample is not None and model is not None:
            inputs = {
                "model": model,
                "latency": spec.model_dump(mode="json", exclude={"arms"}),
                "asked": arm.model_dump(
                    mode="json", include={"split", "prompt", "detail", "answer"}
                ),
                "sample": sample["sample"],
            }

        def go(_rerun: bool) -> dict[str, Any]:
            assert model is not None
            if registry.parse(model)[1].kind != "remote":
                raise UserError(
                    f"[latency] arm {name} runs here ({model}): the latency study times API "
                    "requests; a local arm's speed is in its arm.json"
                )
            step = f"latency:{name}"
            result = measure_latency(
                self.out,
                LatencyOptions(
                    model=model,
                    name=name,
                    requests=spec.requests,
                    concurrency=spec.concurrency,
                    split=arm.split,
                    prompt=arm.prompt or "full",
                    detail=arm.detail,
                    answer=arm.answer if arm.answer in ("enum", "text") else "enum",  # type: ignore[arg-type]
                ),
                on_progress=lambda p: self.ui.progress(step, p.done, p.total),
            )
            means = ", ".join(
                f"c={lv['concurrency']}: {lv.get('mean_ms', 0):.0f} ms" for lv in result.levels
            )
            self.ui.status(f"{name}: mean latency {means}")
            return {"levels": len(result.levels), "emulated": result.emulated}

        self._step(f"latency:{name}", inputs, go)

    def _curve_options(self) -> Any:
        from .curve import CurveOptions

        spec = self.exp.curve
        assert spec is not None
        local = LocalSettings.model_validate(
            spec.model_dump(
                include={"device", "offline", "cpu_price_per_hour", "gpu_price_per_hour"}
            )
        )
        fields = spec.model_dump(exclude={"device", "offline", "cpu_price_per_hour",
                                          "gpu_price_per_hour"})  # fmt: skip
        return CurveOptions(**fields, local=local)

    def _curve(self, sample: dict[str, Any] | None) -> None:
        from .curve import run_curve

        spec = self.exp.curve
        assert spec is not None
        inputs = None
        if sample is not None:
            inputs = {"curve": spec.model_dump(mode="json"), "sample": sample["sample"]}

        def go(_rerun: bool) -> dict[str, Any]:
            result = run_curve(self.out, self._curve_options(), on_status=self.ui.status)
            self.ui.status(f"curve {spec.name}: {result.summary}")
            return {"summary": result.summary, "points": len(result.points)}

        self._step("curve", inputs, go)

    def _report(self, sample: dict[str, Any] | None) -> None:
        from .report.build import ReportOptions, build_report

        upstream = {
            s: (self.state.get(s) or {}).get("finished_at") for s in self.steps() if s != "report"
        }
        inputs = None
        if sample is not None and all(upstream.values()) and not self.result.planned:
            inputs = {"report": self.exp.report.model_dump(mode="json"), "upstream": upstream}
        names = [a.name for a in self.exp.arm]

        def go(_rerun: bool) -> dict[str, Any]:
            r = self.exp.report
            result = build_report(
                self.out,
                ReportOptions(
                    arms=names,
                    baseline=r.baseline,
                    volume=r.volume,
                    months=r.months,
                    serving=r.serving,
                    cpu_price_per_hour=r.cpu_price_per_hour,
                    gpu_price_per_hour=r.gpu_price_per_hour,
                    review_cost=r.review_cost,
                    error_cost=r.error_cost,
                ),
            )
            for line in result.verdict:
                self.ui.status(line)
            return {"report": str(result.out_dir / "report.html")}

        outputs = self._step("report", inputs, go)
        if outputs:
            self.result.report = Path(outputs["report"])


def run_experiment(
    path: Path,
    out: Path | None = None,
    ui: RunUI | None = None,
    dry_run: bool = False,
    only: str | None = None,
) -> RunResult:
    """Load, check and run the experiment in `path` (see the module docstring)."""
    path = Path(path)
    exp, _ = load_experiment(path)
    base = path.resolve().parent
    out = resolve_out(exp, path, out)
    return Runner(exp, base, out, ui or SilentUI(), dry_run, only).run()


def resolve_out(exp: Experiment, path: Path, out: Path | None) -> Path:
    """`--out`, else the file's `out` (relative to the file), else `runs/<file name>`."""
    if out is not None:
        return Path(out)
    if exp.out:
        given = Path(exp.out).expanduser()
        return given if given.is_absolute() else Path(path).resolve().parent / given
    return Path("runs") / Path(path).stem


def _missing(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is None


def _int(value: Any, default: int | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _profile(value: str | None, base: Path) -> Path | None:
    if value is None:
        return None
    if value == "seed-study":
        return Path(value)
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _estimate_line(est: Any, arm: ArmSpec) -> tuple[str, float]:
    """What the arm will cost: its test split through the chosen mode, plus training for a
    fine-tuned arm (hosting is per day, said apart); and the dollars."""
    parts: list[str] = []
    total = 0.0
    if arm.finetune is not None:
        if est.training is not None:
            parts.append(f"training ${est.training.cost_usd:,.2f}")
            total += est.training.cost_usd
        if est.finetuned is not None:
            parts.append(f"test split ${est.finetuned.cost_usd:,.2f}")
            total += est.finetuned.cost_usd
        if est.hosting.usd_per_day:
            parts.append(f"hosting ${est.hosting.usd_per_day:,.2f}/day while deployed")
    else:
        item = est.batch if arm.mode == "batch" and est.batch is not None else est.realtime
        parts.append(f"test split ${item.cost_usd:,.2f} ({arm.mode})")
        total += item.cost_usd
    return f"about ${total:,.2f}: " + ", ".join(parts) + f" ({est.price_key} prices)", total


__all__ = ["RunResult", "RunUI", "SilentUI", "State", "resolve_out", "run_experiment"]
