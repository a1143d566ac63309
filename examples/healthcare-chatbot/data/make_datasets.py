"""Generate the chatbot's fine-tuning set (train.jsonl) and its held-out evaluation set (eval.jsonl).

    python examples/healthcare-chatbot/data/make_datasets.py            # writes next to this file
    python examples/healthcare-chatbot/data/make_datasets.py --out DIR

Deterministic (fixed seeds, no network): running it again reproduces both files byte for byte, which a test
checks. Everything is fictional and comes from ../knowledge/.

train.jsonl: one conversation a line, `{"messages": [...]}` as `kaip.training.lora_sft` reads it:
  - questions about every fact in plans.md, glossary.md, providers.md and faq.md, several paraphrases each, with
    a short answer that states the fact with its exact figures;
  - out-of-scope questions (weather, code, sports, recipes, stock tips, diagnoses) answered with REFUSAL;
  - RAG-format conversations: the system prompt built by `kaip.rag.augment.augment` itself (so it matches what
    the serving gateway sends byte for byte) with a fictional member's record (ids EVM-9xxxxx, never the demo's
    EVM-1xxxxx) and sometimes a plan-document passage, the member asking about their own deductible,
    prescriptions, plan or claims, and the answer giving that member's exact figures.

eval.jsonl: `{"question", "reference", "facts", "out_of_scope"[, "context"]}` a line, for
`kaip.evaluation.qa`. Its questions are separate paraphrases that never appear in train.jsonl; `facts` are the
strings a correct answer must contain (matched after normalising numbers: "$1,500", "1500" and "1,500 dollars"
all match "1500"); out-of-scope items have REFUSAL as their reference; `context` (some items) is the context
block the gateway would add to the system prompt, with a held-out member's record.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kaip.evaluation.qa import REFUSAL, SYSTEM_PROMPT
from kaip.rag.augment import augment, context_block
from kaip.rag.chunking import chunk_sections
from kaip.rag.documents import markdown_sections, render_record
from kaip.rag.knowledge import Passage

HERE = Path(__file__).resolve().parent
KNOWLEDGE = HERE.parent / "knowledge"
KB_DIR = "examples/healthcare-chatbot/knowledge"  # the paths the KnowledgeBase in 30-knowledge-base.yaml indexes
TRAIN_SEED = 20240501
EVAL_SEED = 99173

# The persona and the refusal live in kaip.evaluation.qa, so that training, evaluation and serving share them.

# Every fact in the knowledge documents: training paraphrases, one canonical answer with the exact figures, and
# what an evaluation checks for. Held-out paraphrases for evaluation are in EVAL_QUESTIONS, never here.
FACTS: dict[str, dict[str, Any]] = {
    # plans.md
    "plans_offered": {
        "q": ["What plans does Evergreen Mutual offer?", "Which health plans can I choose from?",
              "What are my plan options?", "List the Evergreen Mutual plans.",
              "How many plans are there and what are they called?"],
        "a": "Evergreen Mutual offers three plans for individuals and families: Bronze, Silver and Gold.",
        "facts": ["Bronze", "Silver", "Gold"]},
    "preventive": {
        "q": ["Is preventive care covered?", "Do I pay anything for preventive care?",
              "How much does a preventive checkup cost?", "Is preventive care free on every plan?",
              "Does preventive care count against my deductible?"],
        "a": "Every plan covers preventive care at no cost when you see an in-network provider, and it does not "
             "count against the deductible.",
        "facts": ["no cost", "in-network"]},
    "bronze_premium": {
        "q": ["How much is the Bronze plan per month?", "What is the monthly premium for Bronze?",
              "What does the Bronze plan cost an individual?", "Bronze plan premium?",
              "How much would I pay each month on Bronze?"],
        "a": "The Bronze plan costs $210 per month for an individual, the lowest premium of the three plans.",
        "facts": ["210"]},
    "bronze_deductible": {
        "q": ["What is the Bronze deductible?", "How high is the deductible on the Bronze plan?",
              "What's the annual deductible for Bronze?", "Bronze plan deductible amount?",
              "How much do I pay before the Bronze plan starts paying?"],
        "a": "The Bronze plan's annual deductible is $6,000.",
        "facts": ["6,000"]},
    "bronze_coinsurance": {
        "q": ["What is the coinsurance on Bronze?", "After the deductible, how much does Bronze pay?",
              "What percentage do I pay on the Bronze plan after my deductible?", "Bronze coinsurance rate?",
              "How is the cost split on Bronze once the deductible is met?"],
        "a": "After the deductible on the Bronze plan, the plan pays 60 percent and you pay 40 percent coinsurance.",
        "facts": ["60 percent", "40 percent"]},
    "bronze_oop": {
        "q": ["What is the out-of-pocket maximum on Bronze?", "Bronze out-of-pocket max?",
              "What is the most I could pay in a year on the Bronze plan?", "How much is the Bronze OOP limit?",
              "Is there a yearly cap on my costs with Bronze?"],
        "a": "The Bronze plan's out-of-pocket maximum is $8,700 per year.",
        "facts": ["8,700"]},
    "silver_premium": {
        "q": ["How much is the Silver plan per month?", "What is the Silver premium?",
              "What does Silver cost an individual each month?", "Silver plan monthly cost?",
              "How much would I pay monthly for Silver?"],
        "a": "The Silver plan costs $340 per month for an individual.",
        "facts": ["340"]},
    "silver_deductible": {
        "q": ["What is the Silver deductible?", "How much is the deductible on the Silver plan?",
              "What's the annual deductible for Silver?", "Silver plan deductible amount?",
              "How much do I pay before the Silver plan starts paying?"],
        "a": "The Silver plan's annual deductible is $3,500.",
        "facts": ["3,500"]},
    "silver_coinsurance": {
        "q": ["What is the coinsurance on Silver?", "After the deductible, what do I pay on Silver?",
              "What percentage do I pay on the Silver plan after my deductible?", "Silver coinsurance rate?",
              "How is the cost split on Silver once the deductible is met?"],
        "a": "Coinsurance on the Silver plan is 30 percent after the deductible.",
        "facts": ["30 percent"]},
    "silver_copay": {
        "q": ["What is the copay for a primary care visit on Silver?", "How much is a doctor's visit on Silver?",
              "Silver office visit copay?", "Do I pay the deductible first for a primary care visit on Silver?",
              "What does seeing my primary care doctor cost on the Silver plan?"],
        "a": "On the Silver plan, office visits with a primary care doctor cost a $35 copay, before the deductible.",
        "facts": ["35"]},
    "silver_oop": {
        "q": ["What is the out-of-pocket maximum on Silver?", "Silver out-of-pocket max?",
              "What is the most I could pay in a year on the Silver plan?", "How much is the Silver OOP limit?",
              "Is there a yearly cap on my costs with Silver?"],
        "a": "The Silver plan's out-of-pocket maximum is $7,000 per year.",
        "facts": ["7,000"]},
    "gold_premium": {
        "q": ["How much is the Gold plan per month?", "What is the Gold premium?",
              "What does Gold cost an individual each month?", "Gold plan monthly cost?",
              "How much would I pay monthly for Gold?"],
        "a": "The Gold plan costs $480 per month for an individual, the highest premium of the three plans.",
        "facts": ["480"]},
    "gold_deductible": {
        "q": ["What is the Gold deductible?", "How much is the deductible on the Gold plan?",
              "What's the annual deductible for Gold?", "Gold plan deductible amount?",
              "How much do I pay before the Gold plan starts paying?"],
        "a": "The Gold plan's annual deductible is $1,500, the lowest of the three plans.",
        "facts": ["1,500"]},
    "gold_coinsurance": {
        "q": ["What is the coinsurance on Gold?", "After the deductible, what do I pay on Gold?",
              "What percentage do I pay on the Gold plan after my deductible?", "Gold coinsurance rate?",
              "How is the cost split on Gold once the deductible is met?"],
        "a": "Coinsurance on the Gold plan is 20 percent after the deductible.",
        "facts": ["20 percent"]},
    "gold_primary_copay": {
        "q": ["What is the copay for a primary care visit on Gold?", "How much is a doctor's visit on Gold?",
              "Gold primary care copay?", "What does seeing my family doctor cost on the Gold plan?",
              "How much is a PCP visit with Gold?"],
        "a": "On the Gold plan, primary care visits cost a $20 copay.",
        "facts": ["20"]},
    "gold_specialist_copay": {
        "q": ["What is the specialist copay on Gold?", "How much does a specialist visit cost on Gold?",
              "Gold specialist copay?", "What do I pay to see a specialist with the Gold plan?",
              "How much is a visit to a specialist on Gold?"],
        "a": "On the Gold plan, specialist visits cost a $45 copay.",
        "facts": ["45"]},
    "gold_oop": {
        "q": ["What is the out-of-pocket maximum on Gold?", "Gold out-of-pocket max?",
              "What is the most I could pay in a year on the Gold plan?", "How much is the Gold OOP limit?",
              "Is there a yearly cap on my costs with Gold?"],
        "a": "The Gold plan's out-of-pocket maximum is $4,500 per year.",
        "facts": ["4,500"]},
    "cheapest_plan": {
        "q": ["Which plan is the cheapest?", "Which plan has the lowest premium?",
              "What's the least expensive plan per month?", "I want the lowest monthly cost, which plan?",
              "Which plan has the smallest premium?"],
        "a": "The Bronze plan has the lowest monthly premium, $210 for an individual.",
        "facts": ["Bronze", "210"]},
    "lowest_deductible": {
        "q": ["Which plan has the lowest deductible?", "Which plan has the smallest deductible?",
              "I want a low deductible, which plan should I look at?", "What plan has the cheapest deductible?",
              "Which plan starts paying soonest?"],
        "a": "The Gold plan has the lowest deductible, $1,500 per year.",
        "facts": ["Gold", "1,500"]},
    "open_enrollment": {
        "q": ["When is open enrollment?", "When can I change plans?", "When is the enrollment period?",
              "What are the open enrollment dates?", "Can I switch plans, and when?"],
        "a": "You can change plans during open enrollment, from November 1 to December 15 each year.",
        "facts": ["November 1", "December 15"]},
    "special_enrollment": {
        "q": ["What is a special enrollment period?", "Can I change plans after getting married?",
              "What counts as a qualifying life event?", "I just had a baby, can I change my plan?",
              "How long is the special enrollment period?"],
        "a": "A qualifying life event, such as marriage, the birth of a child or moving to a new state, opens a "
             "special enrollment period of 60 days.",
        "facts": ["60 days"]},
    # glossary.md
    "def_deductible": {
        "q": ["What is a deductible?", "What does deductible mean?", "Define deductible.",
              "Can you explain what a deductible is?", "What's a deductible in health insurance?"],
        "a": "A deductible is the amount you pay for covered health care services each year before your plan "
             "starts to pay; preventive care does not count against it.",
        "facts": ["before your plan starts to pay"]},
    "def_copay": {
        "q": ["What is a copay?", "What does copay mean?", "Define copay.", "Can you explain what a copay is?",
              "When do I pay a copay?"],
        "a": "A copay is a fixed amount, for example $20, that you pay for a covered service such as a doctor's "
             "visit or a prescription refill, paid at the time of the visit.",
        "facts": ["fixed amount"]},
    "def_coinsurance": {
        "q": ["What is coinsurance?", "What does coinsurance mean?", "Define coinsurance.",
              "Can you explain what coinsurance is?", "How is coinsurance calculated?"],
        "a": "Coinsurance is your share of the cost of a covered service, a percentage of the allowed amount, "
             "that you pay after you have met your deductible.",
        "facts": ["percentage", "allowed amount"]},
    "def_oop": {
        "q": ["What is an out-of-pocket maximum?", "What does out-of-pocket maximum mean?",
              "Define out-of-pocket maximum.", "What happens when I reach my out-of-pocket maximum?",
              "Can you explain the out-of-pocket max?"],
        "a": "The out-of-pocket maximum is the most you pay for covered services in a plan year; after that the "
             "plan pays 100 percent of covered services.",
        "facts": ["100 percent"]},
    "def_prior_auth": {
        "q": ["What is prior authorization?", "What does prior authorization mean?", "Do I need approval for an MRI?",
              "Can you explain prior authorization?", "What happens without prior authorization?"],
        "a": "Prior authorization is approval from Evergreen Mutual that a service such as an MRI scan or a "
             "planned surgery is medically necessary before you receive it; without it the claim may be denied.",
        "facts": ["approval", "denied"]},
    "def_eob": {
        "q": ["What is an explanation of benefits?", "What is an EOB?", "Is the explanation of benefits a bill?",
              "Can you explain the explanation of benefits statement?", "What does an EOB show?"],
        "a": "An explanation of benefits is a statement sent after a claim is processed showing what the provider "
             "billed, what the plan paid and what you owe; it is not a bill.",
        "facts": ["not a bill"]},
    # providers.md
    "providers_in_network": {
        "q": ["Are the providers in the directory in-network?", "Are listed providers in-network for my plan?",
              "Which plans are the directory providers in-network for?",
              "Is the provider directory in-network for Bronze too?", "Are directory doctors covered on every plan?"],
        "a": "All providers in the Evergreen Mutual provider directory are in-network for every plan.",
        "facts": ["every plan"]},
    "okafor": {
        "q": ["Who is Dr. Lena Okafor?", "Where is Riverside Family Medicine?",
              "Is Dr. Okafor accepting new patients?", "Where does Dr. Okafor practice?",
              "Can you recommend a primary care doctor in Springfield?"],
        "a": "Dr. Lena Okafor is a primary care doctor at Riverside Family Medicine, 12 Alder Street, Springfield, "
             "and is accepting new patients.",
        "facts": ["Okafor", "12 Alder Street"]},
    "berg": {
        "q": ["Who is Dr. Tomas Berg?", "Where is Hillcrest Clinic?", "Does Dr. Berg offer telehealth?",
              "Is there a primary care doctor in Shelbyville?", "Where does Dr. Berg practice?"],
        "a": "Dr. Tomas Berg is a primary care doctor at Hillcrest Clinic, 88 Maple Avenue, Shelbyville, with "
             "telehealth visits available.",
        "facts": ["Berg", "88 Maple Avenue"]},
    "raman": {
        "q": ["Who is the in-network cardiologist?", "Where is Heartline Cardiology?",
              "Do I need a referral to see Dr. Raman?", "Is there a heart doctor in the network?",
              "Where does Dr. Priya Raman practice?"],
        "a": "Dr. Priya Raman of Heartline Cardiology, 400 Center Road, Springfield, is the in-network "
             "cardiologist; no referral is required on the Gold plan.",
        "facts": ["Raman", "400 Center Road"]},
    "physical_therapy": {
        "q": ["Where can I get physical therapy?", "How many physical therapy visits are covered?",
              "Where is Motion Works Physical Therapy?", "Is physical therapy covered?",
              "Is there a limit on physical therapy visits?"],
        "a": "Motion Works Physical Therapy, 27 Quarry Lane, Springfield, is in-network, and up to 30 visits per "
             "year are covered.",
        "facts": ["30 visits"]},
    "urgent_care_location": {
        "q": ["Where is the urgent care clinic?", "What are QuickCare's hours?", "When is urgent care open?",
              "Is there an in-network urgent care?", "Where is QuickCare Urgent Care?"],
        "a": "QuickCare Urgent Care is at 5 Station Plaza, Springfield, open every day from 8 am to 10 pm.",
        "facts": ["5 Station Plaza", "8 am", "10 pm"]},
    "urgent_care_copay": {
        "q": ["How much is an urgent care visit?", "What is the urgent care copay?",
              "What do I pay at QuickCare?", "Urgent care cost?", "How much does urgent care cost me?"],
        "a": "Urgent care visits cost a $75 copay.",
        "facts": ["75"]},
    "er_cost": {
        "q": ["How much is an emergency room visit?", "What does the ER cost?", "What do I pay for the emergency room?",
              "Emergency room cost?", "How much will an ER visit cost me?"],
        "a": "An emergency room visit costs $350 after the deductible.",
        "facts": ["350"]},
    # faq.md
    "oon_claim": {
        "q": ["How do I submit a claim for out-of-network care?", "How do I file an out-of-network claim?",
              "What's the deadline for out-of-network claims?", "How long do I have to submit a claim?",
              "What do I need to send for an out-of-network claim?"],
        "a": "Send the itemized bill and the claim form within 180 days of the service, through the member portal "
             "or by mail.",
        "facts": ["180 days", "itemized bill"]},
    "oon_reimbursement": {
        "q": ["How much is out-of-network care reimbursed?", "What does Evergreen Mutual pay for out-of-network care?",
              "Is out-of-network care covered?", "What percentage is reimbursed out of network?",
              "Will I get money back for an out-of-network doctor?"],
        "a": "Out-of-network care is reimbursed at 50 percent of the allowed amount.",
        "facts": ["50 percent"]},
    "id_card": {
        "q": ["How do I get a replacement member ID card?", "I lost my insurance card, what do I do?",
              "Can I get a new ID card?", "How long does a new member card take?",
              "Where can I get a digital ID card?"],
        "a": "Download a digital ID card from the member portal, or call member services to have a new card "
             "mailed within 7 to 10 days.",
        "facts": ["member portal", "7 to 10 days"]},
    "generic_drugs": {
        "q": ["How much are generic drugs?", "What is the copay for generic prescriptions?",
              "Are prescriptions covered?", "What do generics cost?", "Generic drug copay?"],
        "a": "Yes, prescriptions are covered: generic drugs cost a $10 copay for a 30-day supply.",
        "facts": ["10", "30-day"]},
    "brand_drugs": {
        "q": ["How much are preferred brand drugs?", "What is the copay for brand-name drugs?",
              "What do preferred brand prescriptions cost?", "Preferred brand drug copay?",
              "How much is a brand-name prescription?"],
        "a": "Preferred brand drugs cost a $40 copay.",
        "facts": ["40"]},
    "specialty_drugs": {
        "q": ["How much are specialty drugs?", "What do I pay for specialty medications?",
              "Specialty drug coinsurance?", "Are specialty drugs covered?",
              "What's the cost share for specialty drugs?"],
        "a": "Specialty drugs have 25 percent coinsurance.",
        "facts": ["25 percent"]},
    "mail_order": {
        "q": ["How does mail-order pharmacy work?", "Is there a mail-order pharmacy?",
              "Can I get a 90-day supply?", "What does mail order cost?", "How much is a 90-day supply by mail?"],
        "a": "Mail-order pharmacy gives a 90-day supply for two copays.",
        "facts": ["90-day", "two copays"]},
    "telehealth": {
        "q": ["Is telehealth covered?", "How much is a telehealth visit?", "What is the telehealth copay?",
              "Do virtual visits cost anything?", "What does telehealth cost on Bronze?"],
        "a": "Telehealth visits with in-network providers cost a $0 copay on the Gold plan and a $15 copay on the "
             "Bronze and Silver plans.",
        "facts": ["0", "15"]},
    "emergency": {
        "q": ["What should I do in an emergency?", "Is emergency care covered out of network?",
              "Do I need prior authorization for an emergency?", "What if I have an emergency?",
              "Is the emergency room covered if it's not in-network?"],
        "a": "Call 911 or go to the nearest emergency room: emergency care is covered in-network and "
             "out-of-network, and prior authorization is never required.",
        "facts": ["911", "never"]},
}

OUT_OF_SCOPE_TRAIN = [
    "What's the weather like today?", "Will it rain tomorrow in Springfield?", "How hot will it be this weekend?",
    "Is it going to snow next week?", "What's the forecast for Shelbyville?",
    "Write a Python function that reverses a string.", "How do I fix a segmentation fault in C?",
    "Can you help me debug my JavaScript?", "Explain recursion with code.", "Write a SQL query to count rows.",
    "Who won the football game last night?", "What are the basketball scores?", "Who is the best tennis player?",
    "When does the baseball season start?", "Which team will win the championship?",
    "Give me a recipe for lasagna.", "How do I bake sourdough bread?", "What should I cook for dinner?",
    "How long do I boil an egg?", "What's a good vegan curry recipe?",
    "Which stocks should I buy?", "Is Bitcoin a good investment?", "Should I sell my shares now?",
    "Give me a stock tip.", "What will the stock market do tomorrow?",
    "I have a headache and a fever, what disease do I have?", "Can you diagnose my rash?",
    "What's wrong with me if my knee hurts?", "Do I have the flu or a cold?", "Is this mole cancer?",
    "Tell me a joke.", "Write a poem about the sea.", "What is the capital of France?",
    "Translate 'good morning' into Spanish.", "Plan a trip to Paris for me.", "What movie should I watch tonight?",
    "Help me with my math homework.", "Who is the president of the United States?",
    "What car should I buy?", "How do I train my dog?",
]

# Held-out evaluation paraphrases: a different template set, none of them in FACTS.
EVAL_QUESTIONS: list[tuple[str, str]] = [
    ("plans_offered", "Which insurance plans do you sell?"),
    ("preventive", "Will I be charged for an annual preventive visit with an in-network doctor?"),
    ("bronze_premium", "What's the price per month of the Bronze option?"),
    ("bronze_deductible", "Tell me the yearly deductible under Bronze."),
    ("bronze_oop", "On Bronze, what's the maximum I'd spend out of pocket in a year?"),
    ("silver_premium", "What is the monthly price of Silver coverage?"),
    ("silver_deductible", "Tell me the yearly deductible under Silver."),
    ("silver_coinsurance", "Once I've met my Silver deductible, what share of the bill is mine?"),
    ("silver_copay", "With Silver, how much is a visit to my primary care physician?"),
    ("silver_oop", "On Silver, what's the maximum I'd spend out of pocket in a year?"),
    ("gold_premium", "What is the monthly price of Gold coverage?"),
    ("gold_deductible", "Tell me the yearly deductible under Gold."),
    ("gold_specialist_copay", "With Gold, what's my copay when I see a specialist?"),
    ("gold_oop", "On Gold, what's the maximum I'd spend out of pocket in a year?"),
    ("open_enrollment", "During which dates can I switch to a different plan?"),
    ("special_enrollment", "I'm moving to a new state. How many days do I have to change my plan?"),
    ("def_deductible", "In plain words, what is meant by a deductible?"),
    ("def_eob", "I received an explanation of benefits in the mail. Do I have to pay it?"),
    ("def_prior_auth", "Why would a claim for a planned surgery be denied without prior authorization?"),
    ("def_oop", "What does the plan pay once I hit the out-of-pocket maximum?"),
    ("okafor", "What's the address of Dr. Lena Okafor's practice?"),
    ("raman", "Is there a cardiologist I can see, and where?"),
    ("physical_therapy", "What's the yearly cap on covered physical therapy sessions?"),
    ("urgent_care_location", "What time does QuickCare open and close?"),
    ("urgent_care_copay", "What's the copay if I go to urgent care?"),
    ("er_cost", "If I end up in the emergency room, how much will it cost after my deductible?"),
    ("oon_claim", "Within how many days must I send in a claim for out-of-network care?"),
    ("oon_reimbursement", "What share of the allowed amount do you reimburse for out-of-network providers?"),
    ("id_card", "My member card is damaged. How can I replace it?"),
    ("generic_drugs", "What's the copay on a 30-day supply of a generic medication?"),
    ("specialty_drugs", "What coinsurance applies to specialty medications?"),
    ("telehealth", "How much do I pay for a video visit with an in-network doctor on Gold?"),
]

# What the held-out question asks for, where that is narrower than the whole fact (and never words the question
# already contains, which an answer repeating the question would get for free).
EVAL_FACTS = {
    "preventive": ["no cost"], "okafor": ["12 Alder Street"], "generic_drugs": ["10"], "telehealth": ["0 copay"],
    "oon_claim": ["180 days"], "urgent_care_location": ["8 am", "10 pm"], "physical_therapy": ["30"],
    "def_prior_auth": ["medically necessary"],
}

OUT_OF_SCOPE_EVAL = [
    "Do you think it will be sunny on Saturday?",
    "Write me a bash script that renames all files in a folder.",
    "Who scored the most goals in the soccer league this season?",
    "How do I make chocolate chip cookies?",
    "Is now a good time to invest in tech stocks?",
    "My throat is sore and I'm coughing. What illness do I have?",
]

# Member questions for RAG conversations: (kind, training paraphrases, held-out paraphrases).
MEMBER_QUESTIONS: dict[str, tuple[list[str], list[str]]] = {
    "met": (["How much of my deductible have I met?", "How much have I paid toward my deductible?",
             "Where am I on my deductible?", "How much deductible have I used so far?"],
            ["What portion of my deductible is already satisfied?"]),
    "deductible": (["What is my deductible?", "How big is my deductible?", "What's my annual deductible?"],
                   ["Remind me what deductible applies to me."]),
    "prescriptions": (["Which prescriptions do I have?", "What medications are on my record?",
                       "What prescriptions are on file for me?"],
                      ["Which drugs do you have listed for me?"]),
    "plan": (["What plan am I on?", "Which plan do I have?", "What's my plan?"],
             ["Which Evergreen Mutual plan am I enrolled in?"]),
    "claims": (["What claims do I have?", "Show me my claims.", "How many claims have I made?"],
               ["Can you list the claims on my account?"]),
    "oop": (["What is my out-of-pocket maximum?", "What's the most I'll pay this year?"],
            ["How much can I be charged at most this year on my plan?"]),
}

PLANS = {"Bronze": 6000, "Silver": 3500, "Gold": 1500}
OOP_MAX = {"Bronze": 8700, "Silver": 7000, "Gold": 4500}
FIRST = ["Ada", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lia", "Mia", "Noa"]
LAST = ["Marsh", "North", "Oakes", "Pike", "Quill", "Reed", "Stone", "Thorn", "Vale", "Wren", "Ash", "Birch"]
DRUGS = ["atorvastatin 20mg", "metformin 500mg", "lisinopril 10mg", "levothyroxine 50mcg", "albuterol inhaler"]
SERVICES = ["office visit", "lab panel", "x-ray", "physical therapy", "urgent care", "telehealth visit"]
MAX_PASSAGE_CHARS = 450  # keeps every conversation under about 400 tokens
PREFIXES = ["Hi, ", "Hello! ", "Quick question: ", "Hey, ", "Excuse me, ", "Can you help? "]


def figure(value: float) -> str:
    """An amount as a member's record shows it (the knowledge base renders the JSON number), with a dollar sign."""
    return "$" + json.dumps(value)


def money(value: float) -> str:
    """$1,500 for whole dollars, $599.80 for cents."""
    return f"${value:,.0f}" if float(value).is_integer() else f"${value:,.2f}"


def member(rng: random.Random, member_id: str) -> dict[str, Any]:
    """A fictional member record with the fields (and the logic) of 20-member-records.yaml's generator."""
    plan = rng.choice(sorted(PLANS))
    number = int(member_id.rsplit("-", 1)[1]) % 10000
    claims = [{"claim_id": f"CLM-9{number:03d}-{j}", "service": rng.choice(SERVICES),
               "billed": round(rng.uniform(40, 900), 2)} for j in range(rng.randint(0, 4))]
    met = round(min(PLANS[plan], sum(c["billed"] for c in claims)), 2)
    return {"member_id": member_id, "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}", "plan": plan,
            "deductible": PLANS[plan], "deductible_met": met,
            "prescriptions": rng.sample(DRUGS, rng.randint(0, 2)), "claims": claims}


def member_answer(kind: str, m: dict[str, Any]) -> tuple[str, list[str]]:
    """The answer to a member question from that member's record, and the figures it must contain. Amounts are
    written exactly as the record writes them ($3085.97, not $3,085.97): copying is what a 135M model does
    reliably, reformatting digits is where it slips."""
    plan, deductible, met = m["plan"], m["deductible"], m["deductible_met"]
    if kind == "met":  # the figures from the record; no arithmetic (a 135M model cannot subtract reliably)
        if met >= deductible:
            return f"You have met your full {figure(deductible)} deductible.", [figure(deductible)]
        return f"You have met {figure(met)} of your {figure(deductible)} deductible.", [figure(met), figure(deductible)]
    if kind == "deductible":
        return f"Your deductible on the {plan} plan is {figure(deductible)} per year.", [figure(deductible)]
    if kind == "prescriptions":
        drugs = m["prescriptions"]
        if not drugs:
            return "You have no prescriptions on file.", ["no prescriptions"]
        return f"You have {len(drugs)} prescription{'s' if len(drugs) > 1 else ''} on file: " \
               f"{' and '.join(drugs)}.", list(drugs)
    if kind == "plan":
        return f"You are on the {plan} plan, member ID {m['member_id']}.", [plan]
    if kind == "claims":
        claims = m["claims"]
        if not claims:
            return "You have no claims on file.", ["no claims"]
        listed = "; ".join(f"{c['claim_id']}, {c['service']}, {figure(c['billed'])}" for c in claims)
        return f"You have {len(claims)} claim{'s' if len(claims) > 1 else ''} on file: {listed}.", \
            [c["claim_id"] for c in claims]
    if kind == "oop":
        return f"On your {plan} plan, the out-of-pocket maximum is {money(OOP_MAX[plan])} per year.", \
            [money(OOP_MAX[plan])]
    raise ValueError(kind)


def doc_passages() -> dict[str, Passage]:
    """The plan documents as the knowledge base chunks them ("heading path" first line, then the text), keyed by
    their section heading; the sections are short enough to be one chunk each."""
    out = {}
    for name in ("plans.md", "glossary.md", "providers.md", "faq.md"):
        sections = markdown_sections((KNOWLEDGE / name).read_text(encoding="utf-8"))
        chunks = chunk_sections(sections, size=200, overlap=40, split_on_headings=True,
                                count_tokens=lambda words: [max(1, len(w) // 3) for w in words])
        for chunk in chunks:
            heading = chunk.position.get("section", "")
            out[heading] = Passage(0, 0.0, chunk.text, f"{KB_DIR}/{name}", chunk.position, {"category": "docs"},
                                   "member-kb")
    return out


def record_passage(m: dict[str, Any], record: int) -> Passage:
    return Passage(0, 0.0, render_record(m, None), f"{KB_DIR}/members.jsonl", {"index": record - 1, "record": record},
                   {"plan": m["plan"], "member_id": m["member_id"]}, "member-kb")


class _FixedKnowledgeBase:
    """Just enough of a KnowledgeBase for `augment`: returns the given passages, best first."""

    def __init__(self, passages: list[Passage]) -> None:
        self.passages = passages
        self.config = SimpleNamespace(spec=SimpleNamespace(retrieval=SimpleNamespace(topK=4, promptTemplate=None)))
        self.embedder = SimpleNamespace(name="fixed", embed=lambda texts: [[0.0] for _ in texts])

    def search(self, query: str, *, subject: str | None, top_k: int, query_vector: Any = None) -> list[Passage]:
        n = len(self.passages)
        return [Passage(i, 1.0 - i / (n + 1), p.text, p.source, p.position, p.metadata, p.knowledge_base)
                for i, p in enumerate(self.passages)][:top_k]


def rag_messages(question: str, passages: list[Passage], subject: str | None) -> list[dict[str, str]]:
    """System and user messages exactly as the gateway sends them after `augment`."""
    messages, _ = augment([{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
                          [_FixedKnowledgeBase(passages)], subject)  # type: ignore[list-item]
    return messages


def vary(rng: random.Random, question: str) -> str:
    prefix = rng.choice(PREFIXES)
    return prefix + question[0].lower() + question[1:] if not question.startswith("I ") else prefix + question


def cite(answer: str, n: int) -> str:
    """The answer with its citation, as the context block's instructions ask: "... per year [1]."."""
    return f"{answer[:-1]} [{n}]{answer[-1]}" if answer[-1] in ".!?" else f"{answer} [{n}]"


def conversation(system: str, question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


def build_train() -> list[dict[str, Any]]:
    rng = random.Random(TRAIN_SEED)
    docs = doc_passages()
    headings = sorted(docs)
    out = []
    for fact in FACTS.values():
        for q in fact["q"]:
            out.append(conversation(SYSTEM_PROMPT, q, fact["a"]))
        for q in rng.sample(fact["q"], 2):  # the same questions with a greeting in front
            out.append(conversation(SYSTEM_PROMPT, vary(rng, q), fact["a"]))
    for q in OUT_OF_SCOPE_TRAIN:
        out.append(conversation(SYSTEM_PROMPT, q, REFUSAL))
    for q in rng.sample(OUT_OF_SCOPE_TRAIN, 12):
        out.append(conversation(SYSTEM_PROMPT, vary(rng, q), REFUSAL))
    # RAG: general questions with the plan documents retrieved (one relevant section, maybe one unrelated).
    section_of = {"bronze": "Bronze plan", "silver": "Silver plan", "gold": "Gold plan", "open": "Changing plans",
                  "special": "Changing plans", "def_deductible": "Deductible", "def_copay": "Copay",
                  "def_coinsurance": "Coinsurance", "def_oop": "Out-of-pocket maximum",
                  "def_prior_auth": "Prior authorization", "def_eob": "Explanation of benefits",
                  "okafor": "Primary care", "berg": "Primary care", "raman": "Cardiology",
                  "physical": "Physical therapy", "urgent": "Urgent care", "er": "Urgent care",
                  "oon": "How do I submit a claim", "id": "How do I get a replacement", "generic": "Are prescriptions",
                  "brand": "Are prescriptions", "specialty": "Are prescriptions", "mail": "Are prescriptions",
                  "telehealth": "Is telehealth", "emergency": "What should I do in an emergency"}
    for key, fact in FACTS.items():
        match = next((v for k, v in section_of.items() if key == k or key.startswith(k + "_")), None)
        if match is None:
            continue
        relevant = next(h for h in headings if h.endswith(match) or h.split(" > ")[-1].startswith(match))
        passages = [docs[relevant]]
        other = docs[rng.choice([h for h in headings if h != relevant])]
        if rng.random() < 0.5 and len(docs[relevant].text) + len(other.text) < MAX_PASSAGE_CHARS:
            passages.append(other)
        rng.shuffle(passages)
        answer = cite(fact["a"], passages.index(docs[relevant]) + 1)
        out.append({"messages": rag_messages(rng.choice(fact["q"]), passages, None)
                    + [{"role": "assistant", "content": answer}]})
    # RAG: members asking about their own records.
    kinds = sorted(MEMBER_QUESTIONS)
    for i in range(48):
        m = member(rng, f"EVM-{900000 + i}")
        record = rng.randint(1, 300)
        for kind in rng.sample(kinds, 3):
            own = record_passage(m, record)
            passages = [own]
            other = docs[rng.choice(headings)]
            # The chatbot retrieves a member's record and a document section (manifests/30-knowledge-base.yaml).
            if rng.random() < 0.85 and len(own.text) + len(other.text) < MAX_PASSAGE_CHARS:
                passages.append(other)
            rng.shuffle(passages)
            answer = cite(member_answer(kind, m)[0], passages.index(own) + 1)
            question = rng.choice(MEMBER_QUESTIONS[kind][0])
            out.append({"messages": rag_messages(question, passages, m["member_id"])
                        + [{"role": "assistant", "content": answer}]})
    rng.shuffle(out)
    return out


def build_eval() -> list[dict[str, Any]]:
    rng = random.Random(EVAL_SEED)
    plain: list[dict[str, Any]] = []
    for key, question in EVAL_QUESTIONS:
        fact = FACTS[key]
        plain.append({"question": question, "reference": fact["a"], "facts": EVAL_FACTS.get(key, fact["facts"]),
                      "out_of_scope": False})
    rng.shuffle(plain)
    refusals = [{"question": q, "reference": REFUSAL, "facts": [], "out_of_scope": True} for q in OUT_OF_SCOPE_EVAL]
    with_context = []
    for i, kind in enumerate(["met", "deductible", "prescriptions", "plan"]):
        m = member(rng, f"EVM-{950000 + i}")
        while (kind == "prescriptions" and not m["prescriptions"]) or (kind == "met" and not m["claims"]):
            m = member(rng, f"EVM-{950000 + i}")
        answer, facts = member_answer(kind, m)
        answer = cite(answer, 1)
        block = context_block([record_passage(m, rng.randint(1, 300))])
        with_context.append({"question": MEMBER_QUESTIONS[kind][1][0], "reference": answer, "facts": facts,
                             "out_of_scope": False, "context": block})
    # Each kind spread evenly through the file, so that its first dozen items (a quick evaluation) hold all three.
    groups = [plain, refusals, with_context]
    keyed = [((j + 0.5) / len(g), k, row) for k, g in enumerate(groups) for j, row in enumerate(g)]
    return [row for _, _, row in sorted(keyed, key=lambda t: (t[0], t[1]))]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="directory for train.jsonl and eval.jsonl")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    train, evaluation = build_train(), build_eval()
    write_jsonl(args.out / "train.jsonl", train)
    write_jsonl(args.out / "eval.jsonl", evaluation)
    print(f"wrote {len(train)} conversations to {args.out / 'train.jsonl'} and {len(evaluation)} items to "
          f"{args.out / 'eval.jsonl'}")


if __name__ == "__main__":
    main()
