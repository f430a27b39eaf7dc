"""Teachers: a frozen classifier that owns its normalisation, plus training, saving and loading.

Every method that "observes" a pretrained net (CIM, RDED, SRe2L, soft labels) goes through
`Teacher`, which pairs the weights with the class list and mean/std they were trained with, so the
same checkpoint cannot silently be used with another class order or normalisation (peers.md §8.5).

    from ddkit.teachers import TeacherConfig, train_teacher, save_teacher, load_teacher, check_teacher
    teacher, metrics = train_teacher(train, test, TeacherConfig(arch="convnet-d3"), device)
    save_teacher(teacher, "runs/cifar10_conv3")          # .safetensors + .json
    teacher = load_teacher("runs/cifar10_conv3", dataset=test)
    check_teacher(teacher, test)                          # refuses a class-order mismatch
"""
from ddkit.teachers.core import Teacher, accuracy, check_teacher, predict_dataset, predict_logits
from ddkit.teachers.io import load_teacher, save_teacher
from ddkit.teachers.train import TeacherConfig, random_flip_translate, train_teacher

__all__ = [
    "Teacher", "TeacherConfig", "accuracy", "check_teacher", "load_teacher", "predict_dataset", "predict_logits",
    "random_flip_translate", "save_teacher", "train_teacher",
]
