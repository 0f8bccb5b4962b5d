"""The training pipeline: validate -> split -> tune -> train -> evaluate -> gate -> export ->
promote. It only wires steps; each step calls into the tailseg library."""

from zenml import pipeline

from steps.etl.data_splitter import data_splitter
from steps.etl.dataset_validator import dataset_validator
from steps.evaluation.model_evaluator import model_evaluator
from steps.export.model_exporter import model_exporter
from steps.promotion.model_gate import model_gate
from steps.promotion.model_promoter import model_promoter
from steps.training.hyperparameter_tuner import hyperparameter_tuner
from steps.training.model_trainer import model_trainer
from tailseg.config import RunConfig


@pipeline(name="training", enable_cache=False)
def training(config: RunConfig) -> None:
    valid_chip_ids, _, _, _ = dataset_validator(config)
    data_split = data_splitter(valid_chip_ids, config)
    best_hyperparameters = hyperparameter_tuner(data_split, config)
    unet_model, training_history, _ = model_trainer(data_split, best_hyperparameters, config)
    test_metrics, _, _, _ = model_evaluator(unet_model, data_split, config)
    gate_decision = model_gate(test_metrics, data_split, config)
    export_info, _ = model_exporter(unet_model, test_metrics, gate_decision, data_split,
                                    training_history, config)
    model_promoter(gate_decision, export_info, config)
