"""``python -m demo`` (``make demo``): the main job end to end on this machine.

Trains a small edge model and a larger cloud model on scikit-learn's digits, converts them with
``model-convert`` (TFLite fp16 for the device, ONNX for the hub), starts Mosquitto,
``cloud-hub serve`` with its MQTT bridge and an ``edge-agent run`` that hands low-confidence
answers to the hub, streams the digits test set through the agent's local API, then sends the
held-out iris rows to the experimental quantum classifier (a 4-qubit VQC trained with
``python -m quantum train``, served by the hub's ``quantum`` backend, reached through a remote
model on the agent); in a second round, a fleet device's fallbacks on training digits the
first edge release never saw are captured by the hub, distilled, built, signed, published and
installed through the signed update path, and the test digits go through the new release at the
same threshold; then it writes a report (``demo-report/``). Not part of the installed
distribution.

Modules, in the order the run uses them:
    options    what a run does (``DemoOptions``) and where it keeps things
    progress   one line per step
    errors     ``DemoError``: a step that could not be done, and why
    artifacts  the trained and converted models and the iris VQC, cached under ``.cache/demo/``
    train      the Keras training itself (run as a child process: it imports TensorFlow)
    processes  child processes that are always stopped: SIGTERM, wait, SIGKILL
    services   the broker, the hub and the agent, started and waited for
    stream     the digits through the agent, every answer recorded
    quantum    the VQC's file and held-out iris rows, streamed through the agent to the hub
    loop       the second round: capture, distill, build, sign, publish, install
    analysis   the numbers, computed from the recorded answers (digits and iris)
    report     the summary tables, ``report.md``, ``summary.json`` and the answers' CSVs
    plots      the PNG figures
    run        the whole run
"""
