"""The machine facts every results file records (the table depends on the CPU's kernel path)."""

import os

import torch

from hpc_modatts.host import cpu_model, describe_host, host_facts, local_cores


def test_host_facts_name_the_kernel_level_torch_dispatches_to_and_the_usable_cores():
    facts = host_facts()
    assert facts["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert facts["cores"] == local_cores() == len(os.sched_getaffinity(0))
    assert facts["torch"] == torch.__version__
    assert isinstance(facts["cpu"], str) and facts["cpu"] == cpu_model() and facts["cpu"]


def test_describe_host_is_one_line_with_the_gpu_only_when_there_is_one():
    cpu_only = {"cpu": "Some CPU", "cpu_capability": "AVX2", "cores": 2, "torch": "x", "gpu": "none"}
    assert describe_host(cpu_only) == "Some CPU, AVX2, 2 cores"
    assert describe_host({**cpu_only, "gpu": "NVIDIA H200"}) == "Some CPU, AVX2, 2 cores, GPU NVIDIA H200"
