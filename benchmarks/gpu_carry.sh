#!/usr/bin/env bash
# Wheels for benchmarks/bench_gpu.py on a lent GPU machine, cut to fit the device tool's calls.
#
#   bash benchmarks/gpu_carry.sh        # here: downloads into .gpu/ (git-ignored), prints the calls
#
# The GPU machine has PyTorch, onnx, OpenCV and numpy but no onnxruntime-gpu, and reaches no
# package registry; a call carries at most 64 MiB with the checkout. onnxruntime-gpu's wheel is
# about 256 MB, so it travels in parts, one per call, each copied to /tmp/ort there (a warm machine
# keeps /tmp between calls: make them back to back); the last call joins them, checks the hash,
# installs everything into /tmp/site and runs the benchmarks. Versions: onnxruntime-gpu 1.31.1 is
# built for CUDA 13 (libcublas.so.13), which the machine's PyTorch 2.11+cu130 brings.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/small .gpu/big
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
download() { python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
             --implementation cp "${platforms[@]}" -d "$@"; }
download .gpu/big onnxruntime-gpu==1.31.1
# What that image lacks (its package list: /work/.library/device/KINDS.md): model.precision: f16
# (onnxconverter-common), srwatch.config (pydantic), and for the daemon itself the watcher, the
# PNG writer's deflate and the status page (watchdog, isal, starlette, uvicorn, python-multipart).
download .gpu/small onnxconverter-common==1.16.0 pydantic==2.14.4 pydantic-core==2.50.5 \
         annotated-types==0.8.0 typing-inspection==0.4.5 watchdog==7.1.0 isal==1.9.1 \
         starlette==1.10.0 uvicorn==0.54.0 python-multipart==0.0.34
wheel=$(ls .gpu/big/*.whl)
(cd .gpu/big && sha256sum "$(basename "$wheel")") > .gpu/small/ort.sha256
# 50 MiB parts: with the checkout (about 11 MB) each call stays under 64 MiB.
split -b 50M -d "$wheel" .gpu/part.
parts=(.gpu/part.*)
for i in "${!parts[@]}"; do mkdir -p ".gpu/p$i" && mv "${parts[$i]}" ".gpu/p$i/"; done
rm -rf .gpu/big
last=$((${#parts[@]} - 1))
echo "Device calls, back to back (each carries one folder):"
for i in $(seq 0 $((last - 1))); do
  echo "  carry [.gpu/p$i]: mkdir -p /tmp/ort && cp .gpu/p$i/* /tmp/ort/ && ls -l /tmp/ort"
done
cat <<MSG
  carry [.gpu/p$last, .gpu/small]:
    cp .gpu/p$last/* /tmp/ort/ && cat /tmp/ort/part.* > /tmp/ort/$(basename "$wheel") && (cd /tmp/ort && sha256sum -c \$OLDPWD/.gpu/small/ort.sha256) &&
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/ort/*.whl .gpu/small/*.whl && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 &&
    python3 benchmarks/bench_gpu.py --out \$OUT/gpu.json 2>&1 | tee \$OUT/gpu.log;
    python3 benchmarks/bench_precision.py --engine onnxruntime --device cuda --speed-scales 3 --size 1000x1000 2>&1 | tee \$OUT/precision.log
  then, on the same warm machine (/tmp/site is still there), the daemon on the GPU, auto layout and two workers:
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1; for w in auto 2; do python3 -m srwatch.cli bench --models default,standin
    --workloads small,mixed --contenders srwatch --backlog 0 --set model.engine=onnxruntime --set model.device=cuda
    --set model.precision=f16 --set pool.workers=\$w --out \$OUT/daemon-\$w; done 2>&1 | tee \$OUT/daemon.log
MSG
